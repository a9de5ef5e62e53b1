//! Installing like a system tool: shell completions, manual pages and the
//! Debian package (`tests/package/build-deb.sh`).

use std::fs;

use crate::support::{run_in, tool};

/// Every subcommand path (`plan`, `backup run`, ...) from `--help`.
fn subcommands() -> Vec<Vec<String>> {
    fn walk(prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
        args.push("--help");
        let tmp = std::env::temp_dir();
        let r = run_in(&tmp, &args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let Some(section) = r.stdout.split("Commands:\n").nth(1) else {
            return;
        };
        for line in section.lines() {
            if line.is_empty() || !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap().to_owned();
            if name == "help" {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(name);
            out.push(path.clone());
            walk(&path, out);
        }
    }
    let mut out = Vec::new();
    walk(&[], &mut out);
    out
}

#[test]
#[ignore = "needs groff (tests/run.sh installs groff-base)"]
fn a_manual_page_per_command_and_groff_renders_each_without_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man");
    let r = run_in(tmp.path(), &["manpages", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut want: Vec<String> = subcommands()
        .iter()
        .map(|p| format!("cinderblock-{}.1", p.join("-")))
        .collect();
    want.push("cinderblock.1".into());
    want.sort();
    let mut got: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, want);
    assert!(want.contains(&"cinderblock-backup-restore.1".to_owned()));
    assert_eq!(
        r.stdout,
        format!("wrote {} manual pages to {}\n", want.len(), out.display())
    );
    for page in &got {
        let path = out.join(page);
        let g = tool(
            tmp.path(),
            "groff",
            &["-man", "-Tutf8", "-ww", "-z", path.to_str().unwrap()],
        );
        assert_eq!((g.code, g.stderr.as_str()), (0, ""), "{page}");
    }
    let plan = fs::read_to_string(out.join("cinderblock-plan.1")).unwrap();
    assert!(plan.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{plan}");
    assert!(plan.contains(".TH cinderblock-plan 1"), "{plan}");
    for flag in ["format", "detailed\\-exitcode", "recreate\\-lost"] {
        assert!(plan.contains(&format!("\\-\\-{flag}")), "{flag} in\n{plan}");
    }
    // Deterministic: no date, the same bytes twice.
    let again = tmp.path().join("again");
    run_in(tmp.path(), &["manpages", "--out", again.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("cinderblock.1")).unwrap(),
        fs::read(again.join("cinderblock.1")).unwrap()
    );
}

#[test]
fn bash_completion_completes_commands_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run_in(tmp.path(), &["completions", "bash"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let script = tmp.path().join("cinderblock.bash");
    fs::write(&script, &r.stdout).unwrap();
    // The function bash calls on TAB, called as bash would.
    let complete = |words: &str| {
        let cmd = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _cinderblock cinderblock \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = tool(tmp.path(), "bash", &["-c", &cmd]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    assert_eq!(complete("cinderblock pl"), "plan\n");
    assert!(complete("cinderblock plan --fo").contains("--format\n"));
    assert_eq!(
        complete("cinderblock plan --format ''"),
        "text\njson\nmarkdown\n"
    );
    assert!(complete("cinderblock backup r").contains("restore\n"));
}

#[test]
#[ignore = "needs zsh and fish (tests/run.sh installs them)"]
fn zsh_and_fish_load_their_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let zsh = tmp.path().join("_cinderblock");
    let r = run_in(tmp.path(), &["completions", "zsh"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    fs::write(&zsh, &r.stdout).unwrap();
    let z = tool(tmp.path(), "zsh", &["-n", zsh.to_str().unwrap()]);
    assert_eq!((z.code, z.stderr.as_str()), (0, ""));
    // Loaded through compinit from a directory on $fpath, as a package
    // installs it; the completion function is then defined.
    let z = tool(
        tmp.path(),
        "zsh",
        &[
            "-f",
            "-c",
            &format!(
                "fpath=({} $fpath); autoload -U compinit; compinit -u -d {}/zcompdump; \
                 autoload -Uz +X _cinderblock; print ${{+functions[_cinderblock]}} ${{_comps[cinderblock]}}",
                tmp.path().display(),
                tmp.path().display()
            ),
        ],
    );
    assert_eq!(z.code, 0, "{}", z.stderr);
    assert_eq!(z.stdout, "1 _cinderblock\n", "{}", z.stderr);

    let fish = tmp.path().join("cinderblock.fish");
    let r = run_in(tmp.path(), &["completions", "fish"]);
    fs::write(&fish, &r.stdout).unwrap();
    let f = tool(
        tmp.path(),
        "fish",
        &[
            "--no-config",
            "-c",
            &format!(
                "source {}; complete -C 'cinderblock pl'; complete -C 'cinderblock plan --format '",
                fish.display()
            ),
        ],
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let names: Vec<&str> = f
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    // fish sorts the candidates.
    assert_eq!(names, ["plan", "json", "markdown", "text"], "{}", f.stdout);
}

/// The package `tests/run.sh` built (`tests/package/build-deb.sh`), named by
/// `CINDERBLOCK_DEB`.
fn built_deb() -> std::path::PathBuf {
    let deb = std::env::var_os("CINDERBLOCK_DEB").expect(
        "CINDERBLOCK_DEB names the package built by tests/package/build-deb.sh (tests/run.sh sets it)",
    );
    // Absolute: the tools below run in a scratch directory.
    std::path::absolute(deb).expect("CINDERBLOCK_DEB is a usable path")
}

#[test]
#[ignore = "needs the Debian package tests/run.sh builds (CINDERBLOCK_DEB)"]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn the_debian_package_installs_verifies_and_removes_cleanly() {
    let deb = built_deb();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let rs = root.to_str().unwrap();
    let deb_s = deb.to_str().unwrap();

    let info = tool(tmp.path(), "dpkg-deb", &["--field", deb_s]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    assert!(
        info.stdout.contains("Package: cinderblock\n"),
        "{}",
        info.stdout
    );
    assert!(
        info.stdout.contains("Depends: libc6 (>= "),
        "{}",
        info.stdout
    );

    // A throwaway root with an empty dpkg database: nothing on this machine
    // is touched and no dpkg lock is shared with other runs. Maintainer
    // scripts run without chroot, with DPKG_ROOT set (they then leave
    // systemd alone); the root has no libc6 package, hence --force-depends
    // (Depends is checked above and against this machine below).
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut all = vec!["--root", rs, "--force-script-chrootless", "--force-depends"];
        all.extend_from_slice(args);
        let r = tool(tmp.path(), "dpkg", &all);
        assert_eq!(r.code, 0, "dpkg {args:?}:\n{}{}", r.stdout, r.stderr);
        r
    };
    dpkg(&["-i", deb_s]);
    let listed = dpkg(&["-L", "cinderblock"]).stdout;
    for path in [
        "/usr/bin/cinderblock",
        "/lib/systemd/system/cinderblock.service",
        "/etc/cinderblock/agent.env",
        "/etc/cinderblock/manifests",
        "/var/lib/cinderblock",
        "/usr/share/man/man1/cinderblock.1.gz",
        "/usr/share/man/man1/cinderblock-plan.1.gz",
        "/usr/share/man/man1/cinderblock-backup-restore.1.gz",
        "/usr/share/bash-completion/completions/cinderblock",
        "/usr/share/zsh/vendor-completions/_cinderblock",
        "/usr/share/fish/vendor_completions.d/cinderblock.fish",
        "/usr/share/doc/cinderblock/copyright",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} not in\n{listed}");
    }
    let status = dpkg(&["-s", "cinderblock"]).stdout;
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("/etc/cinderblock/agent.env "),
        "conffile:\n{status}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(root.join("var/lib/cinderblock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // The installed files are what the sources say.
    assert_eq!(
        fs::read(root.join("lib/systemd/system/cinderblock.service")).unwrap(),
        fs::read(crate::support::root().join("examples/systemd/cinderblock.service")).unwrap()
    );
    // The installed binary runs and its man page renders.
    let v = tool(
        tmp.path(),
        root.join("usr/bin/cinderblock").to_str().unwrap(),
        &["--version"],
    );
    assert_eq!(
        v.stdout,
        format!("cinderblock {}\n", env!("CARGO_PKG_VERSION"))
    );
    let man = tool(
        tmp.path(),
        "man",
        &[
            "-l",
            root.join("usr/share/man/man1/cinderblock-plan.1.gz")
                .to_str()
                .unwrap(),
        ],
    );
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(man.stdout.contains("--format"), "{}", man.stdout);

    // systemd-analyze verify of the installed unit, inside the root. The
    // root holds only our package, so it gets the rest of a system from
    // this machine: systemd's own units (sysinit.target, ...) and the
    // kill(1) that ExecReload names.
    let units = root.join("lib/systemd/system");
    for e in fs::read_dir("/lib/systemd/system").unwrap() {
        let e = e.unwrap();
        let to = units.join(e.file_name());
        if !to.exists() && e.file_type().unwrap().is_file() {
            fs::copy(e.path(), to).unwrap();
        }
    }
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
    let verify = |what: &str| {
        let r = tool(
            tmp.path(),
            "systemd-analyze",
            &["verify", "--root", rs, "cinderblock.service"],
        );
        (r.code, format!("{what}: {}{}", r.stdout, r.stderr))
    };
    let (code, out) = verify("installed");
    assert_eq!(code, 0, "{out}");
    // And it is a check that can fail: without the binary it does.
    let bin = root.join("usr/bin/cinderblock");
    let hidden = root.join("usr/bin/.cinderblock");
    fs::rename(&bin, &hidden).unwrap();
    let (code, out) = verify("binary hidden");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("/usr/bin/cinderblock is not executable"),
        "{out}"
    );
    fs::rename(&hidden, &bin).unwrap();

    // This machine satisfies Depends (apt simulates installing the file).
    let sim = tool(
        tmp.path(),
        "apt-get",
        &["install", "-s", "--no-install-recommends", deb_s],
    );
    assert_eq!(sim.code, 0, "{}{}", sim.stdout, sim.stderr);
    assert!(sim.stdout.contains("Inst cinderblock "), "{}", sim.stdout);
    assert!(
        !sim.stdout
            .lines()
            .any(|l| l.starts_with("Inst ") && !l.starts_with("Inst cinderblock ")),
        "Depends would pull in more packages:\n{}",
        sim.stdout
    );

    // Remove keeps the conffiles and the state directory; purge removes
    // the conffiles and keeps the state (journal, catalogue).
    fs::write(root.join("var/lib/cinderblock/agent-status.json"), "{}").unwrap();
    dpkg(&["-r", "cinderblock"]);
    assert!(!bin.exists());
    assert!(!root.join("lib/systemd/system/cinderblock.service").exists());
    assert!(root.join("etc/cinderblock/agent.env").exists());
    dpkg(&["-P", "cinderblock"]);
    assert!(!root.join("etc/cinderblock/agent.env").exists());
    assert!(root.join("var/lib/cinderblock/agent-status.json").exists());
    let gone = tool(tmp.path(), "dpkg", &["--root", rs, "-s", "cinderblock"]);
    assert_ne!(gone.code, 0, "{}", gone.stdout);
}
