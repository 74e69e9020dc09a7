//! Who is on the other end: the socket peer, or — only when that peer is a proxy the operator
//! trusts (`HOGLET_TRUSTED_PROXIES`) — the address the proxies recorded in `X-Forwarded-For`.
//! A client chooses its own `X-Forwarded-For`, so trusting it from anyone would let it rotate
//! addresses past the login lockout, or lock a victim's address out.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::error::ApiError;
use crate::service::activity::Origin;
use crate::state::AppState;

/// The client's address, as far as hoglet can trust it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no peer address")))?;
        Ok(ClientIp(client_address(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// Where the request came from, as the activity log records it: the trusted client address and
/// the `User-Agent`.
impl FromRequestParts<AppState> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        Ok(Origin::new(Some(ip), user_agent))
    }
}

/// The socket peer, unless it is a trusted proxy: then the right-most `X-Forwarded-For` hop that
/// is not itself a trusted proxy (hops are appended left to right, so everything right of it was
/// written by proxies we trust). A hop that is not an address ends the walk at the last good one.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let peer = ip("10.0.0.5");
        // No trusted proxies: the header is ignored.
        assert_eq!(client_address(peer, &xff(&["1.1.1.1"]), &[]), peer);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("8.8.8.8"), &xff(&["1.1.1.1"]), &trusted),
            ip("8.8.8.8")
        );
        // The right-most hop that is not a trusted proxy; what the client wrote further left is not.
        assert_eq!(
            client_address(peer, &xff(&["6.6.6.6, 1.1.1.1, 10.1.1.1"]), &trusted),
            ip("1.1.1.1")
        );
        assert_eq!(
            client_address(peer, &xff(&["6.6.6.6", "1.1.1.1"]), &trusted),
            ip("1.1.1.1")
        );
        assert_eq!(
            client_address(ip("::1"), &xff(&["2001:db8::7"]), &trusted),
            ip("2001:db8::7")
        );
        // Only proxies: the furthest one. Garbage: the last good address.
        assert_eq!(
            client_address(peer, &xff(&["10.2.2.2, 10.3.3.3"]), &trusted),
            ip("10.2.2.2")
        );
        assert_eq!(
            client_address(peer, &xff(&["1.1.1.1, junk, 10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        assert_eq!(client_address(peer, &xff(&[]), &trusted), peer);
    }
}
