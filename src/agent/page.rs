//! The agent's status page (`GET /`): the status document as one HTML page
//! for people, rendered on the server.
//!
//! Shows the conditions, the source and its revisions, the last reconcile,
//! back ends with capacity bars (and thin pool data/metadata use), objects
//! and their states, drift and lost volumes, migrations in flight with
//! their progress (read rate and time left), and backups with their age. Every size carries its exact
//! byte count in `data-bytes` (and every count in `data-count`), so a test
//! can compare the page with `/status` number for number.
//!
//! Invariants: pure (the status and `now` in, bytes out); no script, no
//! external asset (styles inline, the favicon a `data:` URL), so it works
//! offline and under the `Content-Security-Policy` the route sends; every
//! piece of text is HTML-escaped. The page reloads itself every
//! [`REFRESH_SECONDS`] through a `<meta>` refresh, not a script.
//!
//! Must not: read anything but the status it is given (the handler copies
//! it under the short mutex), or decide anything.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::fleet::FleetStatus;
use super::status::{BackendStatus, Condition, Status};
use crate::plan::capacity::human;

/// Seconds between reloads of the page.
pub const REFRESH_SECONDS: u32 = 15;

/// The policy the route sends with the page: nothing but itself and inline
/// styles.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = r"
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --mute: #6e7781; --line: #d0d7de; }
@media (prefers-color-scheme: dark) { :root { --ok: #3fb950; --bad: #f85149; --warn: #d29922; --mute: #8b949e; --line: #30363d; } }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1em 1.5em 3em; max-width: 72em; }
h1 { font-size: 1.4em; margin: .2em 0; } h2 { font-size: 1.1em; margin: 1.6em 0 .5em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3em .6em .3em 0; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--mute); } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px ui-monospace, monospace; } .mute { color: var(--mute); }
.ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
.badge { display: inline-block; border: 1px solid currentColor; border-radius: 1em; padding: 0 .7em; margin: 0 .4em .3em 0; }
meter, progress { width: 12em; height: 1em; vertical-align: middle; }
.errors { white-space: pre-wrap; font: 12px ui-monospace, monospace; margin: .3em 0; }
footer { margin-top: 2em; color: var(--mute); }
";

/// The page.
pub fn render(status: &Status, now: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(16 * 1024);
    let host = &status.agent.host;
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>cinderblock · {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(host)
    );
    let _ = writeln!(
        s,
        "<header><h1>cinderblock on <span id=\"host\">{}</span></h1>\n<p class=\"mute\">version {} · pid {} · {} · started {} · serving {}</p>",
        esc(host),
        esc(&status.agent.version),
        status.agent.pid,
        esc(&status.agent.state),
        when(status.agent.started_at, now),
        esc(&status.agent.listen)
    );
    conditions(&mut s, &status.conditions);
    s.push_str("</header>\n");
    if let Some(f) = &status.fleet {
        fleet(&mut s, f, &status.agent.host, now);
    }
    source(&mut s, status, now);
    reconcile(&mut s, status, now);
    backends(&mut s, &status.backends);
    migrations(&mut s, status, now);
    objects(&mut s, status);
    backups(&mut s, status, now);
    revisions(&mut s, status, now);
    let _ = writeln!(
        s,
        "<footer>Rendered {} from the status document (<a href=\"/status\">/status</a>, <a href=\"/metrics\">/metrics</a>); reloads every {REFRESH_SECONDS} s.</footer>\n</body>\n</html>",
        stamp(now)
    );
    s
}

fn conditions(s: &mut String, conds: &[Condition]) {
    s.push_str("<p id=\"conditions\">");
    for c in conds {
        // Stalled=True is the bad state; Ready and SourceReady are good
        // when true.
        // The label says the status in words ("not Stalled"), so a green
        // badge never reads as the bad state.
        let good = (c.status == "True") != (c.type_ == "Stalled");
        let label = match c.status.as_str() {
            "True" => esc(&c.type_),
            "False" => format!("not {}", esc(&c.type_)),
            other => format!("{} {}", esc(&c.type_), esc(other)),
        };
        let _ = write!(
            s,
            "<span class=\"badge {}\" title=\"{}\" data-condition=\"{}\" data-status=\"{}\">{} {label}: {}</span>",
            if good { "ok" } else { "bad" },
            esc(&c.message),
            esc(&c.type_),
            esc(&c.status),
            if good { "✔" } else { "✘" },
            esc(&c.reason)
        );
    }
    s.push_str("</p>\n");
}

fn source(s: &mut String, st: &Status, now: DateTime<Utc>) {
    let src = &st.source;
    s.push_str("<section id=\"source\"><h2>Source</h2>\n<table>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row(
        "manifests",
        format!(
            "{} <code>{}</code>{}",
            esc(&src.kind),
            esc(&src.location),
            src.branch
                .as_ref()
                .map_or_else(String::new, |b| format!(" branch <code>{}</code>", esc(b)))
        ),
    );
    row(
        "latest revision",
        rev(src.latest_revision.as_deref(), "latest"),
    );
    row(
        "in force (last good)",
        rev(src.last_good_revision.as_deref(), "good"),
    );
    row(
        "applied",
        format!(
            "{} {}",
            rev(src.applied_revision.as_deref(), "applied"),
            when(src.applied_at, now)
        ),
    );
    row("checked", when(src.checked_at, now));
    if let Some(bad) = &src.bad_revision {
        row(
            "<span class=\"bad\">refused</span>",
            format!(
                "{} since {}<div class=\"errors\">{}</div>",
                rev(Some(&bad.revision), "bad"),
                when(Some(bad.since), now),
                esc(&bad.errors.join("\n"))
            ),
        );
    }
    if let Some(e) = &src.fetch_error {
        row(
            "<span class=\"bad\">fetch error</span>",
            format!("<div class=\"errors\">{}</div>", esc(e)),
        );
    }
    s.push_str("</table></section>\n");
}

fn rev(r: Option<&str>, id: &str) -> String {
    match r {
        Some(r) => format!("<code data-revision=\"{id}\">{}</code>", esc(r)),
        None => "<span class=\"mute\">none</span>".to_owned(),
    }
}

fn reconcile(s: &mut String, st: &Status, now: DateTime<Utc>) {
    let _ = writeln!(
        s,
        "<section id=\"reconcile\"><h2>Last reconcile</h2>\n<p><span data-count=\"reconciles\">{}</span> {} since start; last success {}.</p>",
        st.reconcile_count,
        if st.reconcile_count == 1 {
            "reconcile"
        } else {
            "reconciles"
        },
        when(st.last_success, now)
    );
    let Some(r) = &st.last_reconcile else {
        s.push_str("<p class=\"mute\">No reconcile has finished yet.</p></section>\n");
        return;
    };
    let class = match r.result.as_str() {
        "applied" | "no-changes" => "ok",
        "stopped" => "warn",
        _ => "bad",
    };
    let _ = writeln!(
        s,
        "<p><strong class=\"{class}\" id=\"result\">{}</strong> {} in {} ms (triggers: {}); revision {}; \
         planned <span data-count=\"planned\">{}</span>: {} added, {} changed, {} destroyed, {} forgotten.</p>",
        esc(&r.result),
        when(r.finished_at, now),
        r.duration_ms,
        esc(&r.triggers.join(", ")),
        rev(r.revision.as_deref(), "reconciled"),
        r.planned,
        r.added,
        r.changed,
        r.destroyed,
        r.forgotten
    );
    let lines: Vec<String> = r
        .error
        .iter()
        .chain(&r.plan_errors)
        .map(|e| format!("<li class=\"bad\">{}</li>", esc(e)))
        .chain(r.notes.iter().map(|n| format!("<li>{}</li>", esc(n))))
        .collect();
    if !lines.is_empty() {
        let _ = writeln!(s, "<ul>{}</ul>", lines.join(""));
    }
    s.push_str("</section>\n");
}

/// A size: human, with the exact bytes in `data-bytes`.
fn bytes(n: u64, what: &str) -> String {
    #[allow(clippy::cast_precision_loss)] // shown to people, rounded
    let h = human(n as f64);
    format!("<span data-bytes=\"{n}\" data-of=\"{what}\">{h}</span>")
}

fn backends(s: &mut String, list: &[BackendStatus]) {
    s.push_str("<section id=\"backends\"><h2>Back ends</h2>\n");
    if list.is_empty() {
        s.push_str("<p class=\"mute\">None discovered yet.</p></section>\n");
        return;
    }
    s.push_str(
        "<table>\n<tr><th>back end</th><th>used</th><th class=\"n\">free</th><th class=\"n\">total</th>\
         <th class=\"n\">provisioned</th><th>thin pool</th><th></th></tr>\n",
    );
    for b in list {
        let used = b.total.saturating_sub(b.free);
        let meter = if b.discovered && b.total > 0 {
            #[allow(clippy::cast_precision_loss)] // a bar's fill
            let pct = 100.0 * used as f64 / b.total as f64;
            format!(
                "<meter min=\"0\" max=\"{}\" value=\"{used}\" low=\"{}\" high=\"{}\" optimum=\"0\" title=\"{pct:.1}% used\"></meter> {pct:.0}%",
                b.total,
                b.total / 10 * 7,
                b.total / 10 * 8,
            )
        } else {
            String::new()
        };
        let pool = match (b.thin_data_percent, b.thin_metadata_percent) {
            (None, None) => String::new(),
            (d, m) => format!("{} {}", pool_meter("data", d), pool_meter("metadata", m)),
        };
        let state = match (&b.error, b.discovered) {
            (Some(e), _) => format!("<span class=\"bad\">{}</span>", esc(e)),
            (None, true) => "<span class=\"ok\">up</span>".to_owned(),
            (None, false) => "<span class=\"bad\">not discovered</span>".to_owned(),
        };
        let _ = writeln!(
            s,
            "<tr data-backend=\"{}\"><td><code>{}</code></td><td>{meter}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{pool}</td><td>{state}</td></tr>",
            esc(&b.name),
            esc(&b.name),
            bytes(b.free, "free"),
            bytes(b.total, "total"),
            bytes(b.provisioned, "provisioned"),
        );
    }
    s.push_str("</table></section>\n");
}

/// The fleet (agent with `--etcd`): etcd's state, the placer, and every
/// host — up or down, its placements, its pending changes (its last plan
/// in short), the revisions it has, when it last published — then the
/// volumes of down hosts.
fn fleet(s: &mut String, f: &FleetStatus, this: &str, now: DateTime<Utc>) {
    let _ = writeln!(
        s,
        "<section id=\"fleet\"><h2>Fleet (<span data-count=\"fleet-hosts\">{}</span> hosts, <span data-count=\"fleet-placements\">{}</span> placements)</h2>",
        f.hosts.len(),
        f.placements
    );
    let etcd = if f.available {
        "<span class=\"ok\" data-fleet=\"available\">etcd answers</span>".to_owned()
    } else {
        format!(
            "<span class=\"bad\" data-fleet=\"unavailable\">etcd unavailable: {}</span>",
            esc(f.reason.as_deref().unwrap_or("unknown"))
        )
    };
    let leader = match &f.leader {
        Some(l) if f.is_leader => format!(
            "<code data-leader=\"{}\">{}</code> (this agent)",
            esc(l),
            esc(l)
        ),
        Some(l) => format!("<code data-leader=\"{}\">{}</code>", esc(l), esc(l)),
        None => "<span class=\"warn\">none elected</span>".to_owned(),
    };
    let _ = writeln!(
        s,
        "<p>{etcd} · prefix <code>{}</code> · placer {leader} · as of {}</p>",
        esc(&f.prefix),
        when(f.since, now)
    );
    if f.hosts.is_empty() {
        s.push_str("<p class=\"mute\">No host known yet.</p></section>\n");
        return;
    }
    s.push_str(
        "<table>\n<tr><th>host</th><th>state</th><th class=\"n\">placements</th><th>pending changes</th>\
         <th>manifests</th><th>applied</th><th>published</th></tr>\n",
    );
    for h in &f.hosts {
        let state = if h.up {
            "<td class=\"ok\" data-host-state=\"up\">up</td>"
        } else {
            "<td class=\"bad\" data-host-state=\"down\">down</td>"
        };
        let p = &h.pending;
        let pending = if h.published_at.is_none() {
            "<span class=\"mute\">no view published yet</span>".to_owned()
        } else if p.actions == 0 && p.waiting == 0 && p.errors.is_empty() {
            "<span class=\"ok\" data-count=\"pending-actions\">0</span> none".to_owned()
        } else {
            let mut t = format!(
                "<span data-count=\"pending-actions\">{}</span> action(s), <span data-count=\"pending-waiting\">{}</span> waiting, <span data-count=\"pending-errors\">{}</span> error(s)",
                p.actions,
                p.waiting,
                p.errors.len()
            );
            for e in &p.errors {
                let _ = write!(t, "<div class=\"errors bad\">{}</div>", esc(e));
            }
            t
        };
        let this_host = if h.host == this {
            " <span class=\"mute\">(this host)</span>"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<tr data-host=\"{}\"><td><code>{}</code>{this_host}</td>{state}<td class=\"n\" data-count=\"host-placements\">{}</td><td>{pending}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.host),
            esc(&h.host),
            h.placements,
            short_rev(h.revision.as_deref()),
            short_rev(h.applied_revision.as_deref()),
            when(h.published_at, now)
        );
    }
    s.push_str("</table>\n");
    if !f.unavailable_volumes.is_empty() {
        let _ = writeln!(
            s,
            "<h2>Unavailable volumes (<span data-count=\"unavailable\">{}</span>): their host is down</h2>\n<ul>",
            f.unavailable_volumes.len()
        );
        for v in &f.unavailable_volumes {
            let _ = writeln!(s, "<li class=\"bad\"><code>{}</code></li>", esc(v));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</section>\n");
}

/// A revision for a table cell: its first 12 characters, the whole in the
/// title.
fn short_rev(r: Option<&str>) -> String {
    match r {
        Some(r) => format!(
            "<code title=\"{}\">{}</code>",
            esc(r),
            esc(&r.chars().take(12).collect::<String>())
        ),
        None => "<span class=\"mute\">none</span>".to_owned(),
    }
}

fn pool_meter(what: &str, pct: Option<f64>) -> String {
    match pct {
        Some(p) => format!(
            "{what} <meter min=\"0\" max=\"100\" value=\"{p}\" low=\"70\" high=\"80\" optimum=\"0\" data-percent=\"{what}\"></meter> {p:.1}%"
        ),
        None => format!("{what} <span class=\"mute\">unknown</span>"),
    }
}

#[allow(clippy::cast_precision_loss)] // a rate shown rounded
fn migrations(s: &mut String, st: &Status, now: DateTime<Utc>) {
    s.push_str("<section id=\"migrations\"><h2>Migrations in flight</h2>\n");
    if st.migrations.is_empty() {
        s.push_str("<p class=\"mute\">None.</p></section>\n");
        return;
    }
    s.push_str(
        "<table>\n<tr><th>volume</th><th>from → to</th><th>progress</th><th class=\"n\">read</th><th class=\"n\">size</th><th class=\"n\">rate</th><th class=\"n\">ETA</th><th>started</th></tr>\n",
    );
    for m in &st.migrations {
        #[allow(clippy::cast_precision_loss)] // a bar's fill
        let pct = if m.to_read == 0 {
            0.0
        } else {
            100.0 * m.read as f64 / m.to_read as f64
        };
        let _ = writeln!(
            s,
            "<tr data-migration=\"{}\"><td><code>{}</code></td><td><code>{}</code> → <code>{}</code></td>\
             <td><progress max=\"{}\" value=\"{}\"></progress> {pct:.0}%</td><td class=\"n\">{} of {}</td><td class=\"n\">{}</td><td class=\"n\" data-rate=\"{}\">{}/s</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&m.address),
            esc(&m.address),
            esc(&m.from),
            esc(&m.to),
            m.to_read.max(1),
            m.read,
            bytes(m.read, "read"),
            bytes(m.to_read, "to-read"),
            bytes(m.size, "size"),
            m.rate,
            human(m.rate as f64),
            m.eta_seconds
                .map_or_else(|| "—".to_owned(), |s| format!("{s} s")),
            when(Some(m.started_at), now)
        );
    }
    s.push_str("</table></section>\n");
}

fn state_class(state: &str) -> &'static str {
    match state {
        "ready" => "ok",
        "pending" | "deferred" | "held" => "warn",
        _ => "bad",
    }
}

fn objects(s: &mut String, st: &Status) {
    let _ = writeln!(
        s,
        "<section id=\"objects\"><h2>Objects (<span data-count=\"objects\">{}</span>)</h2>",
        st.objects.len()
    );
    if st.objects.is_empty() {
        s.push_str("<p class=\"mute\">None.</p>\n");
    } else {
        s.push_str(
            "<table>\n<tr><th>object</th><th>state</th><th>back end</th><th class=\"n\">size</th><th>why</th></tr>\n",
        );
        for o in &st.objects {
            let retry = match (o.failures, o.retry_at) {
                (0, _) => String::new(),
                (n, Some(t)) => format!(" ({n} failures; retry at {})", stamp(t)),
                (n, None) => format!(" ({n} failures)"),
            };
            let _ = writeln!(
                s,
                "<tr data-object=\"{}\"><td><code>{}</code></td><td class=\"{}\" data-state=\"{}\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}{}</td></tr>",
                esc(&o.address),
                esc(&o.address),
                state_class(&o.state),
                esc(&o.state),
                esc(&o.state),
                o.backend
                    .as_deref()
                    .map_or_else(String::new, |b| format!("<code>{}</code>", esc(b))),
                o.size.map_or_else(String::new, |n| bytes(n, "size")),
                esc(&o.message),
                esc(&retry)
            );
        }
        s.push_str("</table>\n");
    }
    if !st.drift.is_empty() || !st.lost.is_empty() {
        let _ = writeln!(
            s,
            "<h2>Drift (<span data-count=\"drift\">{}</span>) and lost volumes (<span data-count=\"lost\">{}</span>)</h2>\n<ul>",
            st.drift.len(),
            st.lost.len()
        );
        for d in &st.drift {
            let _ = writeln!(
                s,
                "<li><code>{}</code> {}</li>",
                esc(&d.address),
                esc(&d.message)
            );
        }
        for l in &st.lost {
            let _ = writeln!(
                s,
                "<li class=\"bad\"><code>{}</code> was lost outside cinderblock (not recreated)</li>",
                esc(l)
            );
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</section>\n");
}

fn backups(s: &mut String, st: &Status, now: DateTime<Utc>) {
    let b = &st.backups;
    s.push_str("<section id=\"backups\"><h2>Backups</h2>\n");
    if b.policies.is_empty() && b.volumes.is_empty() {
        s.push_str("<p class=\"mute\">No backup policies.</p></section>\n");
        return;
    }
    s.push_str("<table>\n<tr><th>volume</th><th>policy</th><th>last success</th><th class=\"n\">stored</th><th>next run</th><th></th></tr>\n");
    for v in &b.volumes {
        let state = if v.running {
            "<span class=\"warn\">running</span>".to_owned()
        } else if let Some(e) = &v.last_error {
            format!(
                "<span class=\"bad\">failed {}×: {}</span>",
                v.failures,
                esc(e)
            )
        } else if let Some(w) = &v.warning {
            format!("<span class=\"warn\">{}</span>", esc(w))
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "<tr data-backup=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}{}</td><td class=\"n\">{}</td><td>{}</td><td>{state}</td></tr>",
            esc(&v.volume),
            esc(&v.volume),
            esc(&v.policy),
            when(v.last_success, now),
            v.last_backup_id
                .as_deref()
                .map_or_else(String::new, |id| format!(
                    " <code class=\"mute\">{}</code>",
                    esc(id.get(..8).unwrap_or(id))
                )),
            v.last_size.map_or_else(String::new, |n| bytes(n, "stored")),
            v.next_run.map_or_else(String::new, stamp),
        );
    }
    s.push_str("</table>\n<p>");
    for p in &b.policies {
        let _ = write!(
            s,
            "<span class=\"badge\" data-policy=\"{}\">{}: <code>{}</code> {}{}</span>",
            esc(&p.name),
            esc(&p.name),
            esc(&p.schedule),
            esc(&p.timezone),
            p.error.as_deref().map_or_else(
                || p.next_run
                    .map_or_else(String::new, |t| format!(", next {}", stamp(t))),
                |e| format!(", <span class=\"bad\">{}</span>", esc(e))
            )
        );
        for (what, c) in [("verify", &p.verify), ("drill", &p.drill)] {
            let Some(c) = c else { continue };
            let last = if c.problems.is_empty() {
                format!("last passed {}", when(c.last_success, now))
            } else {
                format!("<span class=\"bad\">{}</span>", esc(&c.problems.join("; ")))
            };
            let _ = write!(
                s,
                " <span class=\"badge\" data-check=\"{}/{what}\">{what} <code>{}</code>: {last}</span>",
                esc(&p.name),
                esc(&c.schedule),
            );
        }
    }
    s.push_str("</p></section>\n");
}

fn revisions(s: &mut String, st: &Status, now: DateTime<Utc>) {
    s.push_str("<section id=\"revisions\"><h2>Revisions</h2>\n");
    if st.source.revisions.is_empty() {
        s.push_str("<p class=\"mute\">None yet.</p></section>\n");
        return;
    }
    s.push_str(
        "<table>\n<tr><th>revision</th><th>outcome</th><th>when</th><th>details</th></tr>\n",
    );
    for r in &st.source.revisions {
        let class = match r.outcome.as_str() {
            "applied" => "ok",
            _ => "bad",
        };
        let _ = writeln!(
            s,
            "<tr><td><code>{}</code></td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.revision),
            esc(&r.outcome),
            when(Some(r.at), now),
            esc(&r.message)
        );
    }
    s.push_str("</table></section>\n");
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// "3 min ago", with the exact time in a `<time>` element.
fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "<span class=\"mute\">never</span>".to_owned();
    };
    let secs = (now - t).num_seconds();
    let ago = match secs {
        s if s < 0 => "in the future".to_owned(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h {} min ago", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h ago", s / 86_400, s % 86_400 / 3600),
    };
    format!(
        "<time datetime=\"{}\" title=\"{}\" data-age-seconds=\"{secs}\">{ago}</time>",
        stamp(t),
        stamp(t)
    )
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::{
        AgentInfo, BackendStatus, MigrationStatus, ObjectStatus, PolicyStatus, VolumeBackupStatus,
    };

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn status() -> Status {
        let mut st = Status {
            agent: AgentInfo {
                pid: 42,
                host: "stor-a <b>".into(),
                version: "0.1.0".into(),
                started_at: Some(t(-7200)),
                listen: "127.0.0.1:9470".into(),
                state: "running".into(),
                updated_at: Some(t(0)),
            },
            reconcile_count: 7,
            ..Status::default()
        };
        st.set_condition("Ready", true, "ReconciliationSucceeded", "applied", t(-60));
        st.set_condition("Stalled", false, "Reconciling", "", t(-60));
        st.backends.push(BackendStatus {
            name: "thin".into(),
            discovered: true,
            error: None,
            total: 100 << 30,
            free: 25 << 30,
            provisioned: 300 << 30,
            thin_data_percent: Some(75.0),
            thin_metadata_percent: Some(12.5),
        });
        st.objects.push(ObjectStatus {
            address: "volume.db".into(),
            kind: "volume".into(),
            state: "failed".into(),
            backend: Some("thin".into()),
            size: Some(10 << 30),
            message: "lvcreate: <no space>".into(),
            failures: 2,
            retry_at: Some(t(30)),
        });
        st.migrations.push(MigrationStatus {
            address: "volume.archive".into(),
            from: "thin".into(),
            to: "files".into(),
            size: 4 << 30,
            started_at: t(-90),
            read: 1 << 30,
            to_read: 2 << 30,
            written: 1 << 30,
            rate: 1 << 24,
            eta_seconds: Some(64),
        });
        st.backups.policies.push(PolicyStatus {
            name: "nightly".into(),
            schedule: "0 2 * * *".into(),
            timezone: "UTC".into(),
            next_run: Some(t(3600)),
            volumes: vec!["db".into()],
            error: None,
            verify: None,
            drill: None,
        });
        st.backups.volumes.push(VolumeBackupStatus {
            volume: "db".into(),
            policy: "nightly".into(),
            running: false,
            last_success: Some(t(-26 * 3600)),
            last_backup_id: Some("0123456789abcdef".into()),
            last_size: Some(123_456),
            last_error: None,
            last_read: None,
            warning: None,
            failures: 0,
            next_run: Some(t(3600)),
        });
        st
    }

    #[test]
    fn the_page_shows_the_numbers_escaped_and_self_contained() {
        let page = render(&status(), t(0));
        for needle in [
            "<h1>cinderblock on <span id=\"host\">stor-a &lt;b&gt;</span></h1>",
            "data-condition=\"Ready\" data-status=\"True\">✔ Ready: ReconciliationSucceeded</span>",
            "data-condition=\"Stalled\" data-status=\"False\">✔ not Stalled: Reconciling</span>",
            "<span data-count=\"reconciles\">7</span>",
            "<span data-bytes=\"26843545600\" data-of=\"free\">25 GiB</span>",
            "<span data-bytes=\"322122547200\" data-of=\"provisioned\">300 GiB</span>",
            "<meter min=\"0\" max=\"107374182400\" value=\"80530636800\"",
            "data <meter min=\"0\" max=\"100\" value=\"75\"",
            "<td class=\"bad\" data-state=\"failed\">failed</td>",
            "lvcreate: &lt;no space&gt; (2 failures; retry at 2027-01-15T08:00:30Z)",
            "<progress max=\"2147483648\" value=\"1073741824\"></progress> 50%",
            "<td class=\"n\" data-rate=\"16777216\">16 MiB/s</td><td class=\"n\">64 s</td>",
            "data-age-seconds=\"93600\">1 d 2 h ago</time>",
            "<span data-bytes=\"123456\" data-of=\"stored\">120.56 KiB</span>",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
        // Nothing is fetched from anywhere: no script, no external URL.
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains(" src="));
    }

    #[test]
    fn the_fleet_shows_hosts_liveness_placements_and_pending_changes() {
        use crate::agent::fleet::FleetHostStatus;
        use crate::fleet::records::PlanSummary;
        let mut st = status();
        assert!(!render(&st, t(0)).contains("id=\"fleet\""));
        st.fleet = Some(FleetStatus {
            prefix: "/cinderblock".into(),
            available: true,
            since: Some(t(-30)),
            leader: Some("stor-a <b>".into()),
            is_leader: true,
            placements: 5,
            unavailable_volumes: vec!["volume.logs (host stor-c)".into()],
            hosts: vec![
                FleetHostStatus {
                    host: "stor-a <b>".into(),
                    up: true,
                    published_at: Some(t(-5)),
                    revision: Some("manifests dir:0123456789abcdef".into()),
                    applied_revision: Some("manifests dir:0123456789abcdef".into()),
                    pending: PlanSummary::default(),
                    placements: 3,
                },
                FleetHostStatus {
                    host: "stor-b".into(),
                    up: true,
                    published_at: Some(t(-8)),
                    revision: None,
                    applied_revision: None,
                    pending: PlanSummary {
                        actions: 2,
                        waiting: 1,
                        errors: vec!["volume.x: <too big>".into()],
                    },
                    placements: 1,
                },
                FleetHostStatus {
                    host: "stor-c".into(),
                    up: false,
                    published_at: Some(t(-600)),
                    placements: 1,
                    ..FleetHostStatus::default()
                },
            ],
            ..FleetStatus::default()
        });
        let page = render(&st, t(0));
        for needle in [
            "<h2>Fleet (<span data-count=\"fleet-hosts\">3</span> hosts, <span data-count=\"fleet-placements\">5</span> placements)</h2>",
            "<span class=\"ok\" data-fleet=\"available\">etcd answers</span> · prefix <code>/cinderblock</code> · placer <code data-leader=\"stor-a &lt;b&gt;\">stor-a &lt;b&gt;</code> (this agent)",
            "<tr data-host=\"stor-a &lt;b&gt;\"><td><code>stor-a &lt;b&gt;</code> <span class=\"mute\">(this host)</span></td><td class=\"ok\" data-host-state=\"up\">up</td><td class=\"n\" data-count=\"host-placements\">3</td><td><span class=\"ok\" data-count=\"pending-actions\">0</span> none</td><td><code title=\"manifests dir:0123456789abcdef\">manifests di</code></td>",
            "<tr data-host=\"stor-b\"><td><code>stor-b</code></td><td class=\"ok\" data-host-state=\"up\">up</td><td class=\"n\" data-count=\"host-placements\">1</td><td><span data-count=\"pending-actions\">2</span> action(s), <span data-count=\"pending-waiting\">1</span> waiting, <span data-count=\"pending-errors\">1</span> error(s)<div class=\"errors bad\">volume.x: &lt;too big&gt;</div></td>",
            "<tr data-host=\"stor-c\"><td><code>stor-c</code></td><td class=\"bad\" data-host-state=\"down\">down</td>",
            "data-age-seconds=\"600\">10 min ago</time>",
            "<li class=\"bad\"><code>volume.logs (host stor-c)</code></li>",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
        // etcd gone: the reason, and no placer.
        let f = st.fleet.as_mut().unwrap();
        f.available = false;
        f.reason = Some("etcd at http://127.0.0.1:1: no answer".into());
        f.leader = None;
        let page = render(&st, t(0));
        assert!(page.contains("<span class=\"bad\" data-fleet=\"unavailable\">etcd unavailable: etcd at http://127.0.0.1:1: no answer</span>"), "{page}");
        assert!(
            page.contains("placer <span class=\"warn\">none elected</span>"),
            "{page}"
        );
    }

    #[test]
    fn an_agent_before_its_first_reconcile_renders() {
        let page = render(&Status::default(), t(0));
        assert!(page.contains("No reconcile has finished yet."), "{page}");
        assert!(page.contains("None discovered yet."), "{page}");
        assert!(page.ends_with("</html>\n"));
    }
}
