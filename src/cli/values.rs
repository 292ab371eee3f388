//! Command-line values: durations, addresses and ratios read, names and URLs written.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::ValueEnum;

/// Writes a command-line value's name (`strict`, `local`, …): the one place each enum's names
/// are spelt is its `ValueEnum` derive.
pub fn write_value(value: &impl ValueEnum, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match value.to_possible_value() {
        Some(possible) => f.write_str(possible.get_name()),
        None => Ok(()),
    }
}

/// A duration with its unit (`500ms`, `2s`); a bare number is seconds, as these flags took
/// before they took units.
pub(super) fn parse_seconds(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (e.g. 10s, 500ms, or 10 for seconds)"))
}

/// [`parse_seconds`], more than zero.
pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        duration if duration.is_zero() => Err("must be more than zero".to_owned()),
        duration => Ok(duration),
    }
}

/// A duration that needs its unit (`50ms`): a bare number would be ambiguous.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (e.g. 50ms, 1s)"))
}

/// `HOST:PORT`, the host a name or an address; a name is resolved now, at startup.
pub(super) fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let mut addresses = text
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {text:?} (expected HOST:PORT): {error}"))?;
    addresses
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// A number from 0 to 1.
pub(super) fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("expected a number from 0 to 1, got {text:?}")),
    }
}

/// `url` without its password (user information, or a `pass=` query parameter as in
/// `redis+unix://` URLs), for logs and errors.
pub fn redacted(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    };
    match url.split_once('?') {
        Some((base, query)) if url.contains("://") => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("pass", _)) => "pass=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        _ => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_seconds("soon").is_err());
        assert!(parse_interval("0").is_err());
        assert!(parse_duration("5").unwrap_err().contains("50ms"));
    }

    #[test]
    fn addresses_take_host_names() {
        assert_eq!(
            parse_addr("localhost:8081").map(|a| (a.ip().is_loopback(), a.port())),
            Ok((true, 8081))
        );
        assert!(parse_addr("127.0.0.1").is_err(), "no port");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redacted("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?user=u&pass=secret"),
            "redis+unix:///run/redis.sock?user=u&pass=***"
        );
    }
}
