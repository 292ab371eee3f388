//! Values read at scrape time: buckets, reloads and the process.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::reload::Reloader;
use crate::store::{Parts, RedisStore};

/// Registers the scrape-time collectors.
pub fn register(registry: &mut Registry, reloader: Arc<Reloader>) {
    registry.register_collector(Box::new(StateCollector { reloader }));
    registry.register_collector(Box::new(ProcessCollector));
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Buckets and configuration reloads.
#[derive(Debug)]
struct StateCollector {
    reloader: Arc<Reloader>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let limiter = self.reloader.limiter();
        let mut parts = Parts::default();
        limiter.store().parts(&mut parts);
        let (live, evicted) = parts.memory.map_or((0, 0), |m| (m.live(), m.evicted()));
        gauge(
            &mut encoder,
            "buckets",
            "Bucket slots in use in memory (a bucket is one; a sliding log one more per 12 hits it can log)",
            live as f64,
        )?;
        counter(
            &mut encoder,
            "bucket_evictions",
            "Buckets dropped: idle, refunded to full, or of removed limits",
            evicted,
        )?;
        if let Some(redis) = parts.redis {
            redis_metrics(&mut encoder, redis, &parts)?;
        }
        let status = self.reloader.status();
        counter(
            &mut encoder,
            "config_loads",
            "Successful configuration loads, the first included",
            status.loads,
        )?;
        counter(
            &mut encoder,
            "config_load_failures",
            "Configuration reloads that failed (the last good configuration stayed)",
            status.failures,
        )?;
        gauge(
            &mut encoder,
            "config_last_load_success_timestamp_seconds",
            "When the configuration in force was loaded (Unix time)",
            status.loaded_at_unix,
        )?;
        encoder
            .encode_descriptor(
                "build",
                "The tollgate build serving",
                None,
                prometheus_client::metrics::MetricType::Info,
            )?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        let info = [("version", status.version.as_str())];
        encoder
            .encode_descriptor(
                "config",
                "The configuration in force",
                None,
                prometheus_client::metrics::MetricType::Info,
            )?
            .encode_info(&info)?;
        gauge(
            &mut encoder,
            "config_last_load_failed",
            "1 while the last reload failed",
            f64::from(u8::from(status.last_error.is_some())),
        )?;
        if let Some(xds) = &status.xds {
            gauge(
                &mut encoder,
                "xds_connected",
                "1 while the stream to the xDS management server is open",
                f64::from(u8::from(xds.connected)),
            )?;
            let mut versions = encoder.encode_descriptor(
                "xds_versions",
                "Versions pushed by the xDS server: accepted (ACK) or refused (NACK, the limits in force stay)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (result, value) in [("ack", xds.acks), ("nack", xds.nacks)] {
                ConstCounter::new(value).encode(versions.encode_family(&[("result", result)])?)?;
            }
        }
        Ok(())
    }
}

/// The Redis store's health, the failure policy's fallbacks and this replica's cached-mode
/// leases.
fn redis_metrics(
    encoder: &mut DescriptorEncoder,
    redis: &RedisStore,
    parts: &Parts<'_>,
) -> std::fmt::Result {
    gauge(
        encoder,
        "redis_degraded",
        "1 while Redis is unavailable and the failure policy answers",
        f64::from(u8::from(redis.is_degraded())),
    )?;
    counter(
        encoder,
        "redis_errors",
        "Redis calls that failed with an error",
        redis.errors(),
    )?;
    counter(
        encoder,
        "redis_timeouts",
        "Redis calls that outlasted their wait (--redis-timeout, or the caller's deadline)",
        redis.timeouts(),
    )?;
    let (reconciled, lost, units) = redis.late_calls();
    let mut late = encoder.encode_descriptor(
        "redis_late_calls",
        "Calls given up on: late answers reconciled with the answer given, or never answered",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (outcome, value) in [("reconciled", reconciled), ("lost", lost)] {
        ConstCounter::new(value).encode(late.encode_family(&[("outcome", outcome)])?)?;
    }
    counter(
        encoder,
        "redis_reconciled_units",
        "Units given back or charged to make late answers agree with the answers given",
        units,
    )?;
    counter(
        encoder,
        "redis_unanswered_undo_units",
        "Units a denied request across Redis Cluster slots took provisionally whose undo went unanswered: they stay taken unless it ran",
        redis.unanswered_undo_units(),
    )?;
    gauge(
        encoder,
        "redis_replicas",
        "Live replicas sharing Redis, this one included (the failure policy local divides by it)",
        f64::from(redis.replicas()),
    )?;
    let calls = redis.call_seconds();
    calls.encode(encoder.encode_descriptor(
        "redis_call_duration",
        "Round-trip time of Redis calls that were answered (decisions and leases)",
        Some(&Unit::Seconds),
        calls.metric_type(),
    )?)?;
    counter(
        encoder,
        "redis_fallback_decisions",
        "Descriptors decided by --redis-failure because Redis was unavailable",
        parts.failover.map_or(0, |f| f.fallbacks()),
    )?;
    gauge(
        encoder,
        "redis_leases",
        "Cached-mode leases held by this replica",
        parts.leases.map_or(0, |l| l.len()) as f64,
    )
}

/// The process, from /proc: resident memory, CPU time, open files, start time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = me.stat() {
            let rss = stat.rss * procfs::page_size();
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory",
                rss as f64,
            )?;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let metric = ConstCounter::new(cpu);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time",
                None,
                metric.metric_type(),
            )?)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time (Unix time)",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                fds as f64,
            )?;
        }
        Ok(())
    }
}
