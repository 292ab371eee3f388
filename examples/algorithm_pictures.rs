//! Draws how each algorithm treats the same bursty traffic, from the real limiter code.
//!
//! `scripts/pictures` runs it and writes `docs/algorithms/<algorithm>.svg`: one dot per request
//! over two minutes (green admitted, red denied), and the number admitted in the trailing
//! minute as a line against the limit. Every algorithm gets the same arrivals and the same limit
//! of 20 per minute.

use std::fmt::Write as _;
use std::path::Path;

use tollgate::algorithm::{self, FRESH};
use tollgate::clock::NANOS_PER_SEC;
use tollgate::quota::{Algorithm, Quota, Unit};

const LIMIT: u32 = 20;
const SPAN_SECS: u64 = 120;
/// A minute boundary, so the windows start at the picture's left edge.
const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;

/// The arrivals, in ms from T0: a steady trickle, a burst near the end of the first window, a
/// burst right after the boundary, and a last burst once things calmed down.
fn arrivals() -> Vec<u64> {
    let mut at: Vec<u64> = (0..SPAN_SECS / 4).map(|i| i * 4_000 + 1_000).collect();
    at.extend((0..25).map(|i| 50_000 + i * 200));
    at.extend((0..25).map(|i| 61_000 + i * 200));
    at.extend((0..15).map(|i| 100_000 + i * 300));
    at.sort_unstable();
    at
}

/// Whether each arrival is admitted.
fn decide_all(algorithm: Algorithm, arrivals: &[u64]) -> Vec<bool> {
    let quota = Quota::new(LIMIT, Unit::Minute, algorithm);
    let mut state = FRESH;
    let mut log = std::collections::VecDeque::new();
    arrivals
        .iter()
        .map(|ms| {
            let now = T0 + ms * 1_000_000;
            if algorithm == Algorithm::SlidingLog {
                return algorithm::sliding_log::decide(&quota, &mut log, now, 1).allowed;
            }
            let verdict = algorithm::decide(&quota, state, now, 1);
            state = verdict.state;
            verdict.allowed
        })
        .collect()
}

fn svg(algorithm: Algorithm, arrivals: &[u64], admitted: &[bool]) -> String {
    let (width, height, left, top) = (720.0, 236.0, 40.0, 20.0);
    let plot_w = width - left - 20.0;
    let x = |ms: u64| left + plot_w * ms as f64 / (SPAN_SECS * 1000) as f64;
    let count_y = |n: usize| top + 120.0 - 120.0 * n as f64 / (2 * LIMIT) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="{left}" y="13" font-weight="bold">{} — {LIMIT} per minute: admitted (green) and denied (red); line: admitted in the last 60 s</text>"##,
        algorithm.name()
    );
    // Axes, the limit and the window boundaries.
    let _ = writeln!(
        out,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4 3"/><text x="4" y="{}" fill="#999">{LIMIT}</text>"##,
        count_y(LIMIT as usize),
        left + plot_w,
        count_y(LIMIT as usize),
        count_y(LIMIT as usize) + 4.0
    );
    for second in (0..=SPAN_SECS).step_by(30) {
        let gx = x(second * 1000);
        let _ = writeln!(
            out,
            r##"<line x1="{gx}" y1="{top}" x2="{gx}" y2="{}" stroke="#ddd"/><text x="{}" y="{}" fill="#666">{second}s</text>"##,
            top + 175.0,
            gx - 8.0,
            top + 192.0
        );
    }
    // The trailing-minute count of admitted requests.
    let mut points = String::new();
    for ms in (0..=SPAN_SECS * 1000).step_by(250) {
        let n = arrivals
            .iter()
            .zip(admitted)
            .filter(|(at, ok)| **ok && **at <= ms && ms - **at < 60_000)
            .count();
        let _ = write!(points, "{:.1},{:.1} ", x(ms), count_y(n));
    }
    let _ = writeln!(
        out,
        r##"<polyline points="{points}" fill="none" stroke="#36c" stroke-width="1.5"/>"##
    );
    // One dot per request.
    for (at, ok) in arrivals.iter().zip(admitted) {
        let (row, color) = if *ok {
            (top + 145.0, "#2a2")
        } else {
            (top + 160.0, "#d33")
        };
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{row}" r="2.5" fill="{color}"/>"##,
            x(*at)
        );
    }
    let total = admitted.iter().filter(|ok| **ok).count();
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#333">{total} of {} admitted</text></svg>"##,
        left + plot_w,
        top + 208.0,
        arrivals.len()
    );
    out
}

fn main() -> std::io::Result<()> {
    let dir = Path::new("docs/algorithms");
    std::fs::create_dir_all(dir)?;
    let arrivals = arrivals();
    for algorithm in Algorithm::ALL {
        let admitted = decide_all(algorithm, &arrivals);
        let path = dir.join(format!("{}.svg", algorithm.name()));
        std::fs::write(&path, svg(algorithm, &arrivals, &admitted))?;
        println!(
            "{}: {} of {} admitted",
            path.display(),
            admitted.iter().filter(|ok| **ok).count(),
            arrivals.len()
        );
    }
    Ok(())
}
