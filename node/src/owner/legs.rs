//! Each owner leg's way of delivering one page, every one bounded by
//! [`super::LEG_TIMEOUT`].

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{LEG_TIMEOUT, Page, append_durably};
use crate::config::Leg;
use crate::proc::run_bounded;

/// Delivers `page` through `leg`; `Ok` once the leg took it.
pub fn send(leg: &Leg, page: &Page) -> Result<()> {
    match leg {
        Leg::File { path } => {
            let mut line = serde_json::to_vec(page).context("page to JSON")?;
            line.push(b'\n');
            append_durably(path, &line)
        }
        Leg::Command { argv } => run(&fill(argv, page)),
        Leg::Desktop {} => run(&desktop_argv(page)),
        Leg::Webhook { .. } | Leg::Email { .. } | Leg::Tmux {} => {
            bail!("the {} leg is not built yet; the legs after it are still tried", super::leg_kind(leg))
        }
    }
}

/// `argv` with `{subject}`, `{body}`, `{id}`, `{kind}` and `{origin}`
/// substituted inside each argument: never through a shell, so a page's
/// text cannot become a command.
fn fill(argv: &[String], page: &Page) -> Vec<String> {
    let kind = match page.kind {
        super::PageKind::Test => "test",
        super::PageKind::Incident => "incident",
        super::PageKind::Message => "message",
    };
    argv.iter()
        .map(|a| {
            a.replace("{subject}", &page.subject)
                .replace("{body}", &page.body)
                .replace("{id}", &page.id)
                .replace("{kind}", kind)
                .replace("{origin}", &page.origin)
        })
        .collect()
}

/// The desktop notification command of this OS.
fn desktop_argv(page: &Page) -> Vec<String> {
    let title = format!("netsky: {}", page.subject);
    if cfg!(target_os = "macos") {
        // AppleScript string literals: quotes and backslashes escaped, the text stays data.
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let script = format!("display notification \"{}\" with title \"{}\"", esc(&page.body), esc(&title));
        vec!["osascript".into(), "-e".into(), script]
    } else {
        vec!["notify-send".into(), title, page.body.clone()]
    }
}

/// Runs `argv` bounded by the leg timeout; any exit but 0 is a failure, with its stderr.
fn run(argv: &[String]) -> Result<()> {
    let (program, args) = argv.split_first().context("an empty argv")?;
    let out = run_bounded(Command::new(program).args(args), LEG_TIMEOUT)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().next().unwrap_or("").trim();
        bail!(
            "{program} exited with {}{}",
            out.status,
            if line.is_empty() { String::new() } else { format!(": {line}") }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Page {
        Page {
            id: "01JDQ7".into(),
            kind: super::super::PageKind::Incident,
            subject: "agent0 down; rm -rf /".into(),
            body: "it's \"gone\"".into(),
            origin: "work".into(),
            ts: "2026-12-05T09:00:00.000Z".into(),
        }
    }

    #[test]
    fn a_command_template_substitutes_inside_each_argument_and_nothing_more() {
        let argv: Vec<String> = ["notify", "--title={subject}", "{body}", "{kind}:{id}@{origin}", "{nope}"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            fill(&argv, &page()),
            ["notify", "--title=agent0 down; rm -rf /", "it's \"gone\"", "incident:01JDQ7@work", "{nope}"]
        );
    }

    #[test]
    fn a_failing_or_missing_program_is_an_error_with_its_reason() {
        let e = run(&["sh".into(), "-c".into(), "echo nope >&2; exit 3".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        assert!(run(&["netsky-no-such-program".into()]).is_err());
        assert!(run(&[]).is_err());
    }
}
