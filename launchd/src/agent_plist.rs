//! The launchd agent: `~/Library/LaunchAgents/<label>.plist`, made with the
//! plist crate (never a string template, so no path can break the XML).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Supervised};

/// Seconds launchd waits before it starts a daemon that exited again.
pub const THROTTLE_INTERVAL_S: u32 = 10;

/// The keys of a netsky launch agent, as launchd reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchAgent {
    /// Unique per node.
    pub label: String,
    /// `/bin/sh SHIM BINARY HOME`.
    pub program_arguments: Vec<String>,
    /// Start at login.
    pub run_at_load: bool,
    /// Start again whenever it exits.
    pub keep_alive: bool,
    /// The pause before a restart, so a broken daemon does not spin.
    pub throttle_interval: u32,
    /// Where the daemon runs.
    pub working_directory: String,
    /// The daemon's stdout.
    pub standard_out_path: String,
    /// The daemon's stderr.
    pub standard_error_path: String,
    /// NETSKY_HOME and a PATH that finds tmux.
    pub environment_variables: BTreeMap<String, String>,
    /// Any other key a person added: kept, and reported as a hand edit.
    #[serde(flatten)]
    pub other: BTreeMap<String, plist::Value>,
}

/// The launch agent for `s`.
pub fn launch_agent(s: &Supervised) -> LaunchAgent {
    let (out, err) = s.log_paths();
    let home = s.home.to_string_lossy().into_owned();
    LaunchAgent {
        label: s.launchd_label(),
        program_arguments: s.program_arguments(),
        run_at_load: true,
        keep_alive: true,
        throttle_interval: THROTTLE_INTERVAL_S,
        working_directory: home.clone(),
        standard_out_path: out.to_string_lossy().into_owned(),
        standard_error_path: err.to_string_lossy().into_owned(),
        environment_variables: BTreeMap::from([
            ("NETSKY_HOME".to_string(), home),
            ("PATH".to_string(), s.path.clone()),
        ]),
        other: BTreeMap::new(),
    }
}

impl LaunchAgent {
    /// The plist as XML, as launchd and `plutil` read it.
    pub fn to_xml(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        plist::to_writer_xml(&mut out, self).map_err(Error::PlistWrite)?;
        out.push(b'\n');
        Ok(out)
    }

    /// The live binary the agent names (the third program argument).
    pub fn binary(&self) -> Option<&str> {
        self.program_arguments.get(2).map(String::as_str)
    }
}

/// Reads a launch agent back (XML or binary plist).
pub fn read_launch_agent(bytes: &[u8]) -> Result<LaunchAgent, Error> {
    plist::from_bytes(bytes).map_err(Error::PlistRead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn odd() -> Supervised {
        Supervised {
            node: "laptop".into(),
            binary: PathBuf::from("/Applications/net sky/bin/netsky"),
            home: PathBuf::from("/Users/o'neil/My \"home\" & <more>"),
            path: "/opt/homebrew/bin:/usr/bin:/bin".into(),
        }
    }

    #[test]
    fn a_plist_with_quotes_spaces_and_markup_in_its_paths_reads_back_the_same() {
        let a = launch_agent(&odd());
        let xml = a.to_xml().unwrap();
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.contains("&lt;more&gt;") && text.contains("&amp;"), "escaped by the library:\n{text}");
        let back = read_launch_agent(&xml).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.binary(), Some("/Applications/net sky/bin/netsky"));
        assert_eq!(back.program_arguments[1], "/Users/o'neil/My \"home\" & <more>/bin/netsky-shim");
        assert_eq!(back.environment_variables["NETSKY_HOME"], "/Users/o'neil/My \"home\" & <more>");
    }

    #[test]
    fn the_plist_holds_every_key_launchd_needs() {
        let xml = launch_agent(&odd()).to_xml().unwrap();
        let v = plist::Value::from_reader_xml(&xml[..]).unwrap();
        let d = v.as_dictionary().unwrap();
        for k in [
            "Label",
            "ProgramArguments",
            "RunAtLoad",
            "KeepAlive",
            "ThrottleInterval",
            "StandardOutPath",
            "StandardErrorPath",
            "EnvironmentVariables",
        ] {
            assert!(d.contains_key(k), "{k} missing");
        }
        assert_eq!(d["Label"].as_string(), Some("dev.netsky.node.laptop"));
        assert_eq!(d["KeepAlive"].as_boolean(), Some(true));
    }

    #[test]
    fn a_key_added_by_hand_is_kept_and_seen() {
        let a = launch_agent(&odd());
        let mut v = plist::Value::from_reader_xml(&a.to_xml().unwrap()[..]).unwrap();
        v.as_dictionary_mut().unwrap().insert("Nice".into(), plist::Value::Integer(5.into()));
        let mut edited = Vec::new();
        v.to_writer_xml(&mut edited).unwrap();
        let back = read_launch_agent(&edited).unwrap();
        assert!(back.other.contains_key("Nice"));
        assert_ne!(back, a);
    }

    #[test]
    fn a_file_that_is_not_a_plist_is_an_error_not_a_panic() {
        assert!(read_launch_agent(b"<?xml version=\"1.0\"?><plist><dict><key>Label</key>").is_err());
        assert!(read_launch_agent(b"").is_err());
        assert!(
            read_launch_agent(b"<plist><dict><key>Label</key><string>x</string></dict></plist>").is_err()
        );
    }
}
