//! The systemd user unit: `~/.config/systemd/user/netsky-<node>.service`.
//!
//! systemd has no library format to build with, so values are quoted by
//! its own rules (systemd.syntax(7), systemd.service(5)): double quotes with
//! C escapes, `%` doubled (specifiers), and in command lines `$` doubled
//! (variable expansion). A home with spaces or quotes survives.

use crate::{Error, Supervised};

/// Seconds systemd waits before it starts a daemon that exited again.
pub const RESTART_SEC: u32 = 10;

/// Quotes one value for a unit file; `exec` also escapes `$` (command lines expand variables).
pub fn systemd_quote(s: &str, exec: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits a unit value into its words, undoing [`systemd_quote`].
pub fn systemd_unquote(line: &str, exec: bool) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { return Ok(words) };
        let quoted = first == '"';
        if quoted {
            chars.next();
        }
        let mut w = String::new();
        loop {
            match chars.next() {
                None if quoted => return Err("an unterminated quote".into()),
                None => break,
                Some('"') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some('\\') => match chars.next() {
                    Some('"') => w.push('"'),
                    Some('\\') => w.push('\\'),
                    Some('n') => w.push('\n'),
                    Some('t') => w.push('\t'),
                    Some('x') => {
                        let hex: String = (0..2).filter_map(|_| chars.next()).collect();
                        let v = u8::from_str_radix(&hex, 16).map_err(|_| format!("a bad escape \\x{hex}"))?;
                        w.push(v as char);
                    }
                    other => return Err(format!("an unknown escape \\{}", other.unwrap_or(' '))),
                },
                Some('%') => match chars.next() {
                    Some('%') => w.push('%'),
                    other => return Err(format!("a specifier %{}", other.unwrap_or(' '))),
                },
                Some('$') if exec => match chars.next() {
                    Some('$') => w.push('$'),
                    other => return Err(format!("a variable ${}", other.unwrap_or(' '))),
                },
                Some(c) => w.push(c),
            }
        }
        words.push(w);
    }
}

/// The unit for `s`.
pub fn systemd_unit(s: &Supervised) -> String {
    let exec: Vec<String> = s.program_arguments().iter().map(|a| systemd_quote(a, true)).collect();
    let home = s.home.to_string_lossy();
    format!(
        "# Written by `netsky systemd install`; `netsky systemd status` reports edits.\n\
         [Unit]\n\
         Description=netsky node {node}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         Environment={env_home} {env_path}\n\
         Restart=always\n\
         RestartSec={RESTART_SEC}\n\
         StandardOutput=journal\n\
         StandardError=journal\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        node = s.node,
        exec = exec.join(" "),
        env_home = systemd_quote(&format!("NETSKY_HOME={home}"), false),
        env_path = systemd_quote(&format!("PATH={}", s.path), false),
    )
}

/// The command line of a unit's `ExecStart=`, unquoted.
pub fn read_exec_start(unit: &str) -> Result<Vec<String>, Error> {
    let line = unit
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("ExecStart="))
        .ok_or(Error::UnitMissing("ExecStart="))?;
    systemd_unquote(line, true).map_err(|why| Error::UnitMalformed { what: "ExecStart=", why })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn odd() -> Supervised {
        Supervised {
            node: "box".into(),
            binary: PathBuf::from("/opt/net sky/netsky"),
            home: PathBuf::from("/home/o'neil/My \"home\" 100% $HOME\\x"),
            path: "/usr/local/bin:/usr/bin:/bin".into(),
        }
    }

    #[test]
    fn a_command_line_with_quotes_spaces_percent_and_dollar_reads_back_the_same() {
        let s = odd();
        let unit = systemd_unit(&s);
        assert_eq!(read_exec_start(&unit).unwrap(), s.program_arguments());
        assert!(unit.contains("100%%") && unit.contains("$$HOME"), "{unit}");
    }

    #[test]
    fn environment_values_are_quoted_without_doubling_dollars() {
        let q = systemd_quote("NETSKY_HOME=/a $b%c", false);
        assert_eq!(q, "\"NETSKY_HOME=/a $b%%c\"");
        assert_eq!(systemd_unquote(&q, false).unwrap(), vec!["NETSKY_HOME=/a $b%c".to_string()]);
    }

    #[test]
    fn control_characters_are_escaped() {
        let q = systemd_quote("a\nb\u{1}", true);
        assert_eq!(q, "\"a\\nb\\x01\"");
        assert_eq!(systemd_unquote(&q, true).unwrap(), vec!["a\nb\u{1}".to_string()]);
    }

    #[test]
    fn a_malformed_exec_start_is_an_error_naming_it() {
        for bad in ["ExecStart=\"/bin/sh", "ExecStart=/bin/%n", "ExecStart=\"a\\q\"", "Nothing=1"] {
            assert!(read_exec_start(bad).is_err(), "{bad}");
        }
    }
}
