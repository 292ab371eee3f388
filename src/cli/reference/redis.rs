//! The reference's Redis variables as `--redis-*` flags.

use super::env::Env;

/// `REDIS_TYPE=sentinel` is refused here, the one place to change once tollgate counts
/// through Redis Sentinel.
fn sentinel(_env: &Env) -> Result<Vec<String>, String> {
    Err("REDIS_TYPE=sentinel: Redis Sentinel is not supported yet: point REDIS_URL at the master (REDIS_TYPE=single) or use a Redis Cluster (REDIS_TYPE=cluster)".to_owned())
}

/// The `--redis-*` flags for `REDIS_TYPE`, `REDIS_SOCKET_TYPE`, `REDIS_URL`, `REDIS_AUTH` and
/// `REDIS_TLS*`.
pub(super) fn flags(env: &Env) -> Result<Vec<String>, String> {
    let kind = env.string("REDIS_TYPE", "SINGLE").to_ascii_lowercase();
    let cluster = match kind.as_str() {
        "single" => false,
        "cluster" => true,
        "sentinel" => return sentinel(env),
        other => {
            return Err(format!(
                "REDIS_TYPE={other}: expected single, cluster or sentinel"
            ));
        }
    };
    let socket = env.string("REDIS_SOCKET_TYPE", "unix").to_ascii_lowercase();
    let tls = env.flag("REDIS_TLS", false)?;
    let url = env.string("REDIS_URL", "/var/run/nutcracker/ratelimit.sock");
    let auth = env.get("REDIS_AUTH").map(credentials);
    let mut flags = vec!["--store".to_owned(), "redis".to_owned()];
    let urls: Vec<String> = match socket.as_str() {
        "tcp" => {
            let scheme = if tls { "rediss" } else { "redis" };
            let userinfo = auth
                .as_ref()
                .map_or_else(String::new, |(user, password)| match user {
                    Some(user) => format!("{user}:{password}@"),
                    None => format!(":{password}@"),
                });
            url.split(',')
                .map(str::trim)
                .filter(|address| !address.is_empty())
                .map(|address| format!("{scheme}://{userinfo}{address}"))
                .collect()
        }
        "unix" if cluster => {
            return Err("REDIS_TYPE=cluster needs REDIS_SOCKET_TYPE=tcp".to_owned());
        }
        "unix" if tls => return Err("REDIS_TLS=true needs REDIS_SOCKET_TYPE=tcp".to_owned()),
        "unix" => {
            let query = auth
                .as_ref()
                .map_or_else(String::new, |(user, password)| match user {
                    Some(user) => format!("?user={user}&pass={password}"),
                    None => format!("?pass={password}"),
                });
            vec![format!("redis+unix://{url}{query}")]
        }
        other => {
            return Err(format!("REDIS_SOCKET_TYPE={other}: expected tcp or unix"));
        }
    };
    for url in urls {
        flags.push("--redis-url".to_owned());
        flags.push(url);
    }
    if cluster {
        flags.push("--redis-cluster".to_owned());
    }
    for (variable, flag) in [
        ("REDIS_TLS_CACERT", "--redis-ca-file"),
        ("REDIS_TLS_CLIENT_CERT", "--redis-client-cert"),
        ("REDIS_TLS_CLIENT_KEY", "--redis-client-key"),
    ] {
        if let Some(path) = env.get(variable) {
            if !tls {
                return Err(format!("{variable} is set but REDIS_TLS is not true"));
            }
            flags.push(flag.to_owned());
            flags.push(path.to_owned());
        }
    }
    if env.flag("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", false)? {
        return Err("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION=true: tollgate always verifies Redis's certificate: give its CA with REDIS_TLS_CACERT".to_owned());
    }
    if let Some(prefix) = env.get("CACHE_KEY_PREFIX") {
        flags.push("--redis-prefix".to_owned());
        flags.push(prefix.to_owned());
    }
    if env.get("REDIS_TIMEOUT").is_some() {
        let timeout = env.duration("REDIS_TIMEOUT", std::time::Duration::ZERO)?;
        flags.push("--redis-timeout".to_owned());
        flags.push(humantime::format_duration(timeout).to_string());
    }
    Ok(flags)
}

/// `REDIS_AUTH`, `password` or `user:password`, each part percent-encoded for a URL.
fn credentials(auth: &str) -> (Option<String>, String) {
    match auth.split_once(':') {
        Some((user, password)) => (Some(encode(user)), encode(password)),
        None => (None, encode(auth)),
    }
}

/// `text` with every byte but the URL's unreserved ones percent-encoded.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
