//! Building the iroh endpoint: the node key, a chosen UDP address, and the
//! relay mode of the config. With relays disabled nothing leaves the host
//! except QUIC to the peers' direct addresses (no DNS, no port mapping, no
//! relay probes).

use std::net::SocketAddr;

use iroh::endpoint::{NetReportConfig, PortmapperConfig, presets};
use iroh::{Endpoint, RelayMode, RelayUrl};
use netsky_keys::SecretKey;

use crate::MeshError;
use crate::membership::{Allowlist, Door};

/// How the node reaches peers beyond direct addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// Direct addresses only (LAN, tests).
    Disabled,
    /// iroh's public relays and address lookup.
    Default,
    /// A self-hosted iroh relay.
    Url(String),
}

/// The mDNS service name netsky nodes announce themselves under (not iroh's
/// shared one, so only netsky nodes answer; membership is still checked at the door).
const MDNS_SERVICE: &str = "netsky";

/// Binds an endpoint with `key` on `listen`, guarded by `allow`; with
/// `mdns`, it also announces and looks up members on the local network.
/// Returns the endpoint and whether mDNS runs (it may be unavailable).
pub(crate) async fn bind(
    key: &SecretKey,
    listen: SocketAddr,
    relay: &Relay,
    mdns: bool,
    allow: Allowlist,
    events: crate::EventSink,
    alpns: Vec<Vec<u8>>,
) -> Result<(Endpoint, bool), MeshError> {
    let err = |reason: String| MeshError::Bind { addr: listen.to_string(), reason };
    // iroh reports only "Failed to bind sockets"; a probe names the cause.
    if let Err(e) = std::net::UdpSocket::bind(listen) {
        return Err(err(if e.kind() == std::io::ErrorKind::AddrInUse {
            "the address is taken (another netsky daemon, or another program, on this port?)".into()
        } else {
            e.to_string()
        }));
    }
    let mut builder = builder_for(relay, true).map_err(err)?;
    let mut mdns_on = false;
    if mdns && let Some(m) = mdns_lookup(key, true) {
        builder = builder.address_lookup(m);
        mdns_on = true;
    }
    let builder = builder
        .secret_key(key.clone())
        .portmapper_config(PortmapperConfig::Disabled)
        .hooks(Door { allow, events, reported: Default::default() })
        .alpns(alpns)
        .clear_ip_transports()
        .bind_addr(listen)
        .map_err(|e| err(e.to_string()))?;
    let ep = builder.bind().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            reason.push_str(&format!(": {c}"));
            src = c.source();
        }
        err(reason)
    })?;
    Ok((ep, mdns_on))
}

/// The mDNS lookup for the endpoint of `key` (announcing it when `advertise`);
/// `None` on a host without multicast, which then runs on the addresses it
/// was given alone.
fn mdns_lookup(key: &SecretKey, advertise: bool) -> Option<iroh_mdns_address_lookup::MdnsAddressLookup> {
    iroh_mdns_address_lookup::MdnsAddressLookup::builder()
        .service_name(MDNS_SERVICE)
        .advertise(advertise)
        .build(key.public())
        .map_err(|e| tracing::warn!(error = %e, "mDNS unavailable; dialing known addresses only"))
        .ok()
}

/// An endpoint builder for a relay mode; `publish`: announce this endpoint's
/// address under the node id (the daemon's job alone: a one-off endpoint
/// with the same key would replace the daemon's record with its own).
fn builder_for(relay: &Relay, publish: bool) -> Result<iroh::endpoint::Builder, String> {
    use iroh::address_lookup::{DnsAddressLookup, PkarrResolver};
    Ok(match relay {
        Relay::Default if publish => Endpoint::builder(presets::N0),
        Relay::Default => Endpoint::builder(presets::Minimal)
            .address_lookup(PkarrResolver::n0_dns())
            .address_lookup(DnsAddressLookup::n0_dns())
            .relay_mode(iroh::endpoint::default_relay_mode()),
        Relay::Disabled => Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .net_report_config(NetReportConfig::minimal()),
        Relay::Url(u) => {
            let url: RelayUrl = u.parse().map_err(|e| format!("relay URL {u:?}: {e}"))?;
            Endpoint::builder(presets::Minimal).relay_mode(RelayMode::Custom(url.into()))
        }
    })
}

/// An ephemeral endpoint for one-off dials (joining, handing over), with the
/// node key and the node's relay mode, so it reaches the peer the way the
/// daemon would (it looks peers up but announces nothing; on a relay, its
/// connection stands in for the daemon's for the moments it lives); with
/// `mdns`, it also looks the peer up on the local network, for when the
/// addresses it was given are stale.
pub(crate) async fn bind_client(key: &SecretKey, relay: &Relay, mdns: bool) -> Result<Endpoint, MeshError> {
    let listen: SocketAddr = ([0, 0, 0, 0], 0).into();
    let err = |reason: String| MeshError::Bind { addr: listen.to_string(), reason };
    let mut builder = builder_for(relay, false).map_err(err)?;
    if mdns && let Some(m) = mdns_lookup(key, false) {
        builder = builder.address_lookup(m);
    }
    builder
        .secret_key(key.clone())
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr(listen)
        .map_err(|e| MeshError::Bind { addr: listen.to_string(), reason: e.to_string() })?
        .bind()
        .await
        .map_err(|e| MeshError::Bind { addr: listen.to_string(), reason: e.to_string() })
}

/// The address of node `id` at its direct socket addresses.
pub(crate) fn direct_addr(id: netsky_keys::NodeId, addrs: &[SocketAddr]) -> iroh::EndpointAddr {
    addrs.iter().fold(iroh::EndpointAddr::new(id), |a, s| a.with_ip_addr(*s))
}

/// Where to dial node `id` in this relay mode: its direct addresses, plus
/// the self-hosted relay, which serves the whole mesh. `None` when nothing
/// could find it: no address, no relay, no mDNS.
pub(crate) fn dial_addr(
    id: netsky_keys::NodeId,
    addrs: &[SocketAddr],
    relay: &Relay,
    mdns: bool,
) -> Option<iroh::EndpointAddr> {
    let addr = direct_addr(id, addrs);
    match relay {
        Relay::Disabled if addrs.is_empty() && !mdns => None,
        Relay::Disabled => Some(addr),
        Relay::Url(u) => Some(match u.parse::<RelayUrl>() {
            Ok(url) => addr.with_relay_url(url),
            Err(_) => addr,
        }),
        // iroh's address lookup finds the peer's relay by its id.
        Relay::Default => Some(addr),
    }
}

/// The endpoint's dialable direct addresses (never the unspecified address).
pub fn dialable_addrs(ep: &Endpoint) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = ep.addr().ip_addrs().copied().filter(|a| !a.ip().is_unspecified()).collect();
    if v.is_empty() {
        v = ep.bound_sockets().into_iter().filter(|a| !a.ip().is_unspecified()).collect();
    }
    v.sort();
    v.dedup();
    v.truncate(16);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_dialled_where_this_relay_mode_can_find_it() {
        let id = SecretKey::generate().public();
        let at: Vec<SocketAddr> = vec!["127.0.0.1:7000".parse().unwrap()];
        // Nothing could find it: no address, no relay, no mDNS.
        assert!(dial_addr(id, &[], &Relay::Disabled, false).is_none());
        assert!(dial_addr(id, &[], &Relay::Disabled, true).is_some(), "mDNS may find it");
        let direct = dial_addr(id, &at, &Relay::Disabled, false).unwrap();
        assert_eq!(direct.ip_addrs().copied().collect::<Vec<_>>(), at);
        assert_eq!(direct.relay_urls().count(), 0);
        // A self-hosted relay serves the whole mesh: it is part of every address.
        let relayed = dial_addr(id, &[], &Relay::Url("http://127.0.0.1:3340".into()), false).unwrap();
        assert_eq!(
            relayed.relay_urls().map(|u| u.to_string()).collect::<Vec<_>>(),
            ["http://127.0.0.1:3340/"]
        );
        // iroh's own relays are looked up by id.
        let looked_up = dial_addr(id, &[], &Relay::Default, false).unwrap();
        assert_eq!(looked_up.relay_urls().count(), 0);
    }
}
