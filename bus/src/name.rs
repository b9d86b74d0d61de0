//! Node names, agent names and addresses, parsed once at the edge.
//!
//! - node: `[a-z0-9][a-z0-9-]{0,31}`
//! - agent: `agent0` .. `agent999` (no leading zeros) or `agentinfinity`
//! - address: `owner`, `agentN` (this node) or `agentN@node`
//!
//! Nothing else parses, so a name can always be used as a path component.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::BusError;
use crate::error::clip;

/// A node's name, unique in its mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, BusError> {
        let bad = |reason| BusError::BadName { what: "node name", input: clip(s), reason };
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 32 {
            return Err(bad("must be 1 to 32 characters"));
        }
        if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
            return Err(bad("must start with a-z or 0-9"));
        }
        if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') {
            return Err(bad("may hold only a-z, 0-9 and '-'"));
        }
        Ok(NodeName(s.to_owned()))
    }
}

/// An agent on a node: `agent0`..`agent999` or `agentinfinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentName {
    /// `agentN`; `agent0` is the machine's root orchestrator, the rest are clones.
    Numbered(u16),
    /// `agentinfinity`, the watchdog.
    Infinity,
}

impl AgentName {
    /// The root orchestrator of a node.
    pub const ROOT: AgentName = AgentName::Numbered(0);
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentName::Numbered(n) => write!(f, "agent{n}"),
            AgentName::Infinity => f.write_str("agentinfinity"),
        }
    }
}

impl FromStr for AgentName {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, BusError> {
        const GRAMMAR: &str = "expected agent0..agent999 or agentinfinity";
        let bad = || BusError::BadName { what: "agent name", input: clip(s), reason: GRAMMAR };
        let rest = s.strip_prefix("agent").ok_or_else(bad)?;
        if rest == "infinity" {
            return Ok(AgentName::Infinity);
        }
        let digits_ok = !rest.is_empty()
            && rest.len() <= 3
            && rest.bytes().all(|c| c.is_ascii_digit())
            && !(rest.len() > 1 && rest.starts_with('0'));
        if !digits_ok {
            return Err(bad());
        }
        rest.parse::<u16>().map(AgentName::Numbered).map_err(|_| bad())
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a message goes: the owner, or an agent here or on a named node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// The owner, reachable only through the mesh's root.
    Owner,
    /// An agent, on `node` or (when `None`) on this node.
    Agent {
        /// The agent.
        agent: AgentName,
        /// Its node; `None` means this node, before qualification.
        node: Option<NodeName>,
    },
}

impl Address {
    /// `agent@node`, fully qualified.
    pub fn agent(agent: AgentName, node: NodeName) -> Self {
        Address::Agent { agent, node: Some(node) }
    }

    /// Fills in `local` as the node of an unqualified agent address.
    pub fn qualified(self, local: &NodeName) -> Self {
        match self {
            Address::Agent { agent, node: None } => Address::Agent { agent, node: Some(local.clone()) },
            other => other,
        }
    }

    /// True for `owner` and `agent@node`: the forms a signed envelope may carry.
    pub fn is_qualified(&self) -> bool {
        !matches!(self, Address::Agent { node: None, .. })
    }

    /// The agent, if this addresses one.
    pub fn agent_name(&self) -> Option<AgentName> {
        match self {
            Address::Agent { agent, .. } => Some(*agent),
            Address::Owner => None,
        }
    }

    /// The node, if the address names one.
    pub fn node(&self) -> Option<&NodeName> {
        match self {
            Address::Agent { node, .. } => node.as_ref(),
            Address::Owner => None,
        }
    }

    /// The agent this address names on `node`, if it names one there: the
    /// one recipient check of the mailbox and of a mesh push.
    pub fn agent_on(&self, node: &NodeName) -> Option<AgentName> {
        match self {
            Address::Agent { agent, node: Some(n) } if n == node => Some(*agent),
            _ => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Owner => f.write_str("owner"),
            Address::Agent { agent, node: None } => write!(f, "{agent}"),
            Address::Agent { agent, node: Some(n) } => write!(f, "{agent}@{n}"),
        }
    }
}

impl FromStr for Address {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, BusError> {
        if s == "owner" {
            return Ok(Address::Owner);
        }
        match s.split_once('@') {
            None => Ok(Address::Agent { agent: s.parse()?, node: None }),
            Some((a, n)) => Ok(Address::Agent { agent: a.parse()?, node: Some(n.parse()?) }),
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(NodeName);
serde_via_str!(AgentName);
serde_via_str!(Address);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good_addresses_parse_and_print_back() {
        for s in ["owner", "agent0", "agent999", "agentinfinity", "agent3@work", "agent12@a", "agent1@0-x"] {
            assert_eq!(s.parse::<Address>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_addresses_are_refused_before_anything_is_written() {
        let bad = [
            "",
            "agent",
            "agent1000",
            "agent01",
            "agent-1",
            "Agent1",
            "agent1@",
            "@work",
            "agent1@Work",
            "agent1@-work",
            "agent1@a/b",
            "agent1@..",
            "../agent1",
            "agent1@work@x",
            "agent1 ",
            "owner@work",
            "agentInfinity",
            "agent1@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "agent\u{0}",
            "agent1@wörk",
        ];
        for s in bad {
            assert!(s.parse::<Address>().is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn qualification_fills_in_only_missing_nodes() {
        let here: NodeName = "here".parse().unwrap();
        assert_eq!("agent2".parse::<Address>().unwrap().qualified(&here).to_string(), "agent2@here");
        assert_eq!("agent2@there".parse::<Address>().unwrap().qualified(&here).to_string(), "agent2@there");
        assert_eq!("owner".parse::<Address>().unwrap().qualified(&here).to_string(), "owner");
    }

    proptest! {
        #[test]
        fn any_parsed_address_round_trips(s in "(owner|agent[0-9]{1,4}|agentinfinity)(@[a-z0-9-]{0,34})?") {
            if let Ok(a) = s.parse::<Address>() {
                prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
            }
        }

        #[test]
        fn parsed_node_names_are_safe_path_components(s in "\\PC{0,40}") {
            if let Ok(n) = s.parse::<NodeName>() {
                prop_assert!(!n.as_str().contains('/') && n.as_str() != ".." && n.as_str() != ".");
            }
        }
    }
}
