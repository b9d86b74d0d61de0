//! Each owner leg's way of delivering one page, every one bounded by
//! `[owner] leg_timeout_s`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Page, append_durably};
use crate::config::{EmailTls, Leg, WebhookBody};
use crate::proc::run_bounded;

/// Delivers `page` through `leg` within `timeout`; `Ok` once the leg took it.
pub fn send(node: &crate::node::Node, leg: &Leg, page: &Page, timeout: Duration) -> Result<()> {
    match leg {
        Leg::File { path } => {
            let mut line = serde_json::to_vec(page).context("page to JSON")?;
            line.push(b'\n');
            append_durably(path, &line)
        }
        Leg::Command { argv } => run(&fill(argv, page), timeout),
        Leg::Desktop {} => run(&desktop_argv(page), timeout),
        Leg::Webhook { url, body } => post(url, *body, page, timeout),
        Leg::Email { server, from, to, tls, username, password_file, ca_file } => {
            let e = Email { server, from, to, tls: *tls, username, password_file, ca_file };
            mail(&e, page, timeout)
        }
        Leg::Tmux {} => {
            // agent0's session on this node's tmux server (every tmux call is bounded by its own timeout).
            let tmux = crate::constellation::tmux::Tmux::new(&node.config.constellation.tmux_socket);
            tmux.banner("agent0", &format!("netsky {}: {}: {}", page.kind.as_str(), page.subject, page.body))
        }
    }
}

/// An HTTP client that gives up after `timeout` and reads any status as an answer.
fn http(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into()
}

/// Posts `page` to `url` as `body` says; any answer but 2xx is a failure.
fn post(url: &str, body: WebhookBody, page: &Page, timeout: Duration) -> Result<()> {
    let req = http(timeout).post(url);
    let res = match body {
        WebhookBody::Json => req.header("Content-Type", "application/json").send(serde_json::to_vec(page)?),
        WebhookBody::Slack => {
            let text = serde_json::json!({ "text": format!("{}: {}", page.subject, page.body) });
            req.header("Content-Type", "application/json").send(serde_json::to_vec(&text)?)
        }
        // A header holds one line: the subject's line breaks become spaces.
        WebhookBody::Ntfy => {
            req.header("Title", page.subject.replace(['\r', '\n'], " ")).send(page.body.as_bytes())
        }
    };
    let status = res.with_context(|| format!("POST {url}"))?.status();
    if !status.is_success() {
        bail!("POST {url} answered {status}");
    }
    Ok(())
}

/// An email leg's settings, borrowed from the config.
struct Email<'a> {
    server: &'a str,
    from: &'a str,
    to: &'a str,
    tls: EmailTls,
    username: &'a Option<String>,
    password_file: &'a Option<std::path::PathBuf>,
    ca_file: &'a Option<std::path::PathBuf>,
}

/// Mails `page` through the SMTP server of `e`, bounded by `timeout`.
fn mail(e: &Email<'_>, page: &Page, timeout: Duration) -> Result<()> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};
    let (host, port) = e
        .server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .with_context(|| format!("email server {:?} is not host:port", e.server))?;
    let msg = Message::builder()
        .from(e.from.parse().with_context(|| format!("email from {:?}", e.from))?)
        .to(e.to.parse().with_context(|| format!("email to {:?}", e.to))?)
        .subject(format!("netsky: {}", page.subject))
        .body(format!(
            "{}\n\n{} {} from {} at {}\n",
            page.body,
            page.kind.as_str(),
            page.id,
            page.origin,
            page.ts
        ))
        .context("the page as an email")?;
    let mut params = TlsParameters::builder(host.to_string());
    if let Some(ca) = e.ca_file {
        let pem = read_small(ca)?;
        params = params.add_root_certificate(
            Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
        );
    }
    let tls = match e.tls {
        EmailTls::Starttls => Tls::Required(params.build_rustls()?),
        EmailTls::Tls => Tls::Wrapper(params.build_rustls()?),
        EmailTls::None => Tls::None,
    };
    let mut smtp = SmtpTransport::builder_dangerous(host).port(port).tls(tls).timeout(Some(timeout));
    if let Some(user) = e.username {
        let file = e.password_file.as_ref().context("an email username needs password_file")?;
        let password = String::from_utf8(read_small(file)?).context("the password file is not UTF-8")?;
        smtp = smtp
            .credentials(Credentials::new(user.clone(), password.trim_end_matches(['\r', '\n']).to_string()));
    }
    smtp.build().send(&msg).with_context(|| format!("SMTP {}", e.server))?;
    Ok(())
}

/// A small file (a password, a certificate), read whole: one over 64 KiB is an error, never cut.
fn read_small(path: &std::path::Path) -> Result<Vec<u8>> {
    crate::home::read_bounded(path, 64 * 1024)
}

/// A GET of the dead-man's switch `url`, bounded by `timeout`; any answer but 2xx is a failure.
pub fn ping(url: &str, timeout: Duration) -> Result<()> {
    let status = http(timeout).get(url).call().with_context(|| format!("GET {url}"))?.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    Ok(())
}

/// `argv` with `{subject}`, `{body}`, `{id}`, `{kind}` and `{origin}`
/// substituted inside each argument: never through a shell, so a page's
/// text cannot become a command.
fn fill(argv: &[String], page: &Page) -> Vec<String> {
    let kind = page.kind.as_str();
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

/// Runs `argv` bounded by `timeout`; any exit but 0 is a failure, with its stderr.
fn run(argv: &[String], timeout: Duration) -> Result<()> {
    let (program, args) = argv.split_first().context("an empty argv")?;
    let out = run_bounded(Command::new(program).args(args), timeout)?;
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
        let t = Duration::from_secs(5);
        let e = run(&["sh".into(), "-c".into(), "echo nope >&2; exit 3".into()], t).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
        assert!(run(&["netsky-no-such-program".into()], t).is_err());
        assert!(run(&[], t).is_err());
    }
}
