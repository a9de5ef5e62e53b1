//! `completions` and `manpages`: what a package installs beside the binary,
//! generated from the same clap definition that parses the command line, so
//! they can never disagree with it.
//!
//! `clap_complete` and `clap_mangen` are clap's own generators (kept with clap,
//! covering every flag and subcommand); writing completion scripts or roff
//! by hand would drift with the first new flag.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory, ValueEnum};

#[derive(Debug, Args)]
pub(super) struct CompletionsArgs {
    /// The shell to write a completion script for (to stdout).
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(clippy::doc_markdown)] // shown by --help, where backticks would be noise
enum Shell {
    /// bash: install as /usr/share/bash-completion/completions/cinderblock.
    Bash,
    /// zsh: install as /usr/share/zsh/vendor-completions/_cinderblock.
    Zsh,
    /// fish: install as /usr/share/fish/vendor_completions.d/cinderblock.fish.
    Fish,
}

#[derive(Debug, Args)]
pub(super) struct ManpagesArgs {
    /// Directory to write the pages into (created if missing):
    /// cinderblock.1 and one cinderblock-COMMAND.1 per subcommand.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub(super) fn completions(args: &CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = super::Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics on a write error (a closed
    // pipe), we return it.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cinderblock", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(0)
}

pub(super) fn manpages(args: &ManpagesArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    clap_mangen::generate_to(super::Cli::command(), &args.out)
        .with_context(|| format!("cannot write the manual pages into {}", args.out.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(&args.out)
        .with_context(|| format!("cannot list {}", args.out.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("cinderblock") && n.ends_with(".1"))
        .collect();
    pages.sort();
    writeln!(
        std::io::stdout().lock(),
        "wrote {} manual pages to {}",
        pages.len(),
        args.out.display()
    )?;
    Ok(0)
}
