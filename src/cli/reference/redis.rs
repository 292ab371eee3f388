//! The reference's Redis variables as `--redis-*` flags.

use super::env::Env;

/// The `--redis-*` flags for `REDIS_TYPE`, `REDIS_SOCKET_TYPE`, `REDIS_URL`, `REDIS_AUTH` and
/// `REDIS_TLS*`. With `REDIS_TYPE=sentinel`, `REDIS_URL` is the master set's name, then the
/// Sentinels' addresses (`mymaster,10.0.0.1:26379,10.0.0.2:26379`), and `REDIS_SENTINEL_AUTH`
/// the Sentinels' password, as the reference reads them.
pub(super) fn flags(env: &Env) -> Result<Vec<String>, String> {
    let kind = env.string("REDIS_TYPE", "SINGLE").to_ascii_lowercase();
    let (cluster, sentinel) = match kind.as_str() {
        "single" => (false, false),
        "cluster" => (true, false),
        "sentinel" => (false, true),
        other => {
            return Err(format!(
                "REDIS_TYPE={other}: expected single, cluster or sentinel"
            ));
        }
    };
    let socket = env.string("REDIS_SOCKET_TYPE", "unix").to_ascii_lowercase();
    let tls = env.flag("REDIS_TLS", false)?;
    let given = env.string("REDIS_URL", "/var/run/nutcracker/ratelimit.sock");
    let mut url = given.as_str();
    let auth = env.get("REDIS_AUTH").map(credentials);
    let mut flags = vec!["--store".to_owned(), "redis".to_owned()];
    if sentinel {
        let (master, sentinels) = url.split_once(',').unwrap_or((url, ""));
        if master.trim().is_empty() || sentinels.trim().is_empty() {
            return Err(format!(
                "REDIS_TYPE=sentinel needs REDIS_URL=<master name>,<sentinel host:port>,..., not '{given}'"
            ));
        }
        // REDIS_AUTH is the master's; the Sentinels have their own (none when unset).
        flags.extend([
            "--redis-sentinel".to_owned(),
            master.trim().to_owned(),
            "--redis-sentinel-auth".to_owned(),
            env.string("REDIS_SENTINEL_AUTH", ""),
        ]);
        url = sentinels;
    }
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
        "unix" if cluster || sentinel => {
            return Err(format!("REDIS_TYPE={kind} needs REDIS_SOCKET_TYPE=tcp"));
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
    let encode = crate::percent::encode;
    match auth.split_once(':') {
        Some((user, password)) => (Some(encode(user)), encode(password)),
        None => (None, encode(auth)),
    }
}
