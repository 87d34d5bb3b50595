//! Network shaping: bandwidth and one-way latency applied inside our own transports.
//!
//! The machines comet runs on have no `netem`, so the transports shape the link themselves
//! (DESIGN.md §8). The model is a one-direction link:
//!
//! * **Bandwidth** serialises chunks: a token bucket that refills at `bandwidth` bits per
//!   second and holds no burst allowance, so a chunk of `B` bytes occupies the link for
//!   `8·B / bandwidth` seconds after the previous chunk left it.
//! * **Latency** is propagation delay: it is added after serialisation and does not keep the
//!   sender from putting more chunks on the link.
//!
//! A chunk flushed at `now` therefore becomes readable by the peer at
//! `max(now, link_free) + B / bandwidth + latency`, and the link is busy until
//! `max(now, link_free) + B / bandwidth`. Each direction of a duplex link has its own
//! [`LinkShaper`], owned by the sending endpoint.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Bandwidth and one-way latency of a simulated link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetProfile {
    /// Link bandwidth in bits per second; `None` means unlimited.
    pub bandwidth_bits_per_s: Option<u64>,
    /// Propagation delay from a sender's flush to the receiver, added to every chunk.
    pub one_way_latency: Duration,
}

impl NetProfile {
    /// No shaping at all: chunks are delivered as soon as they are flushed.
    pub const fn none() -> Self {
        Self {
            bandwidth_bits_per_s: None,
            one_way_latency: Duration::ZERO,
        }
    }

    /// A data-centre LAN: 5 Gbps, 0.2 ms one way.
    pub const fn lan() -> Self {
        Self {
            bandwidth_bits_per_s: Some(5_000_000_000),
            one_way_latency: Duration::from_micros(200),
        }
    }

    /// A wide-area link: 400 Mbps, 20 ms one way.
    pub const fn wan() -> Self {
        Self {
            bandwidth_bits_per_s: Some(400_000_000),
            one_way_latency: Duration::from_millis(20),
        }
    }

    /// A slow wide-area link: 100 Mbps, 20 ms one way.
    pub const fn slow() -> Self {
        Self {
            bandwidth_bits_per_s: Some(100_000_000),
            one_way_latency: Duration::from_millis(20),
        }
    }

    /// Looks a preset up by name (`none`, `lan`, `wan`, `slow`).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::none()),
            "lan" => Some(Self::lan()),
            "wan" => Some(Self::wan()),
            "slow" => Some(Self::slow()),
            _ => None,
        }
    }

    /// Names of the presets, for help texts.
    pub const PRESETS: [&'static str; 4] = ["none", "lan", "wan", "slow"];

    /// True when this profile adds no delay at all.
    pub fn is_none(&self) -> bool {
        self.bandwidth_bits_per_s.is_none() && self.one_way_latency.is_zero()
    }

    /// Time `bytes` bytes occupy the link at this bandwidth (zero when unlimited).
    pub fn serialisation_time(&self, bytes: usize) -> Duration {
        match self.bandwidth_bits_per_s {
            None => Duration::ZERO,
            Some(bw) => {
                let nanos = (bytes as u128 * 8 * 1_000_000_000).div_ceil(bw.max(1) as u128);
                Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
            }
        }
    }
}

/// Error from parsing a [`NetProfile`] string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network profile '{input}': {reason} (use a preset none|lan|wan|slow, or e.g. 'bw=1gbps,lat=5ms', 'wan,lat=50ms')")]
pub struct ParseProfileError {
    /// The text that failed to parse.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl FromStr for NetProfile {
    type Err = ParseProfileError;

    /// Parses a preset name, or comma-separated items applied left to right: a preset name,
    /// `bw=<rate>` (`1gbps`, `400mbps`, `56kbps`, `1000bps`, a bare number of bits/s, or
    /// `unlimited`) and `lat=<time>` (`20ms`, `200us`, `0.2ms`, `1s`, `0`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ParseProfileError {
            input: s.to_string(),
            reason,
        };
        let text = s.trim().to_ascii_lowercase();
        if text.is_empty() {
            return Err(err("empty string".into()));
        }
        let mut profile = NetProfile::none();
        for item in text.split(',').map(str::trim) {
            if let Some(p) = NetProfile::preset(item) {
                profile = p;
            } else if let Some(v) = item
                .strip_prefix("bw=")
                .or_else(|| item.strip_prefix("bandwidth="))
            {
                profile.bandwidth_bits_per_s = parse_bandwidth(v).map_err(err)?;
            } else if let Some(v) = item
                .strip_prefix("lat=")
                .or_else(|| item.strip_prefix("latency="))
            {
                profile.one_way_latency = parse_duration(v).map_err(err)?;
            } else {
                return Err(err(format!("unknown item '{item}'")));
            }
        }
        Ok(profile)
    }
}

fn parse_number(v: &str, what: &str) -> Result<f64, String> {
    let x: f64 = v
        .parse()
        .map_err(|_| format!("'{v}' is not a number of {what}"))?;
    if !x.is_finite() || x < 0.0 {
        return Err(format!(
            "{what} must be a finite non-negative number, got '{v}'"
        ));
    }
    Ok(x)
}

fn parse_bandwidth(v: &str) -> Result<Option<u64>, String> {
    if matches!(v, "unlimited" | "inf" | "none") {
        return Ok(None);
    }
    let units: [(&str, f64); 4] = [("gbps", 1e9), ("mbps", 1e6), ("kbps", 1e3), ("bps", 1.0)];
    let (num, scale) = units
        .iter()
        .find_map(|(suffix, scale)| v.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((v, 1.0));
    let bits = (parse_number(num, "bits per second")? * scale).round();
    if bits < 1.0 {
        return Err(format!("bandwidth '{v}' is below 1 bit per second"));
    }
    if bits > u64::MAX as f64 {
        return Err(format!("bandwidth '{v}' is too large"));
    }
    Ok(Some(bits as u64))
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let units: [(&str, f64); 4] = [("us", 1e-6), ("ms", 1e-3), ("ns", 1e-9), ("s", 1.0)];
    let Some((num, scale)) = units
        .iter()
        .find_map(|(suffix, scale)| v.strip_suffix(suffix).map(|n| (n, *scale)))
    else {
        if v == "0" {
            return Ok(Duration::ZERO);
        }
        return Err(format!("latency '{v}' needs a unit (ns, us, ms, s)"));
    };
    let secs = parse_number(num, "seconds")? * scale;
    if secs > 3600.0 {
        return Err(format!("latency '{v}' is longer than an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl fmt::Display for NetProfile {
    /// Writes a form that [`NetProfile::from_str`] reads back: a preset name when the
    /// profile equals one, else `bw=...,lat=...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = Self::PRESETS
            .iter()
            .find(|n| Self::preset(n) == Some(*self))
        {
            return f.write_str(name);
        }
        match self.bandwidth_bits_per_s {
            None => f.write_str("bw=unlimited")?,
            Some(bw) => write!(f, "bw={bw}bps")?,
        }
        write!(f, ",lat={}ns", self.one_way_latency.as_nanos())
    }
}

/// The sending side of one shaped link direction: decides when each flushed chunk becomes
/// readable by the peer.
#[derive(Clone, Debug)]
pub struct LinkShaper {
    profile: NetProfile,
    link_free: Option<Instant>,
}

impl LinkShaper {
    /// A shaper for `profile` with an idle link.
    pub fn new(profile: NetProfile) -> Self {
        Self {
            profile,
            link_free: None,
        }
    }

    /// The profile this shaper applies.
    pub fn profile(&self) -> NetProfile {
        self.profile
    }

    /// Schedules a chunk of `bytes` bytes flushed now; returns when the peer may read it.
    pub fn schedule(&mut self, bytes: usize) -> Instant {
        self.schedule_at(Instant::now(), bytes)
    }

    /// Schedules a chunk of `bytes` bytes flushed at `now`; returns when the peer may read
    /// it and marks the link busy for the chunk's serialisation time.
    pub fn schedule_at(&mut self, now: Instant, bytes: usize) -> Instant {
        let start = match self.link_free {
            Some(free) if free > now => free,
            _ => now,
        };
        let on_link = start + self.profile.serialisation_time(bytes);
        self.link_free = Some(on_link);
        on_link + self.profile.one_way_latency
    }
}

/// Sleeps until `deadline` with sub-scheduler-tick precision: a coarse sleep, then a short
/// yielding spin for the last 150 µs (OS sleeps overshoot by tens of µs, which would skew
/// LAN-latency rounds).
pub fn sleep_until(deadline: Instant) {
    const SPIN: Duration = Duration::from_micros(150);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_design() {
        assert_eq!(NetProfile::lan().bandwidth_bits_per_s, Some(5_000_000_000));
        assert_eq!(
            NetProfile::lan().one_way_latency,
            Duration::from_micros(200)
        );
        assert_eq!(NetProfile::wan().bandwidth_bits_per_s, Some(400_000_000));
        assert_eq!(
            NetProfile::slow().one_way_latency,
            Duration::from_millis(20)
        );
        assert!(NetProfile::none().is_none());
        assert!(!NetProfile::lan().is_none());
    }

    #[test]
    fn parse_presets_and_custom() {
        for name in NetProfile::PRESETS {
            let p: NetProfile = name.parse().unwrap();
            assert_eq!(Some(p), NetProfile::preset(name));
            assert_eq!(p.to_string(), name);
        }
        let p: NetProfile = "bw=1gbps,lat=5ms".parse().unwrap();
        assert_eq!(p.bandwidth_bits_per_s, Some(1_000_000_000));
        assert_eq!(p.one_way_latency, Duration::from_millis(5));
        let p: NetProfile = "WAN, lat=50ms".parse().unwrap();
        assert_eq!(p.bandwidth_bits_per_s, Some(400_000_000));
        assert_eq!(p.one_way_latency, Duration::from_millis(50));
        let p: NetProfile = "lat=0.2ms".parse().unwrap();
        assert_eq!(p.bandwidth_bits_per_s, None);
        assert_eq!(p.one_way_latency, Duration::from_micros(200));
        let p: NetProfile = "bw=56kbps,lat=0".parse().unwrap();
        assert_eq!(p.bandwidth_bits_per_s, Some(56_000));
        assert_eq!(p.one_way_latency, Duration::ZERO);
        let p: NetProfile = "bw=2500000".parse().unwrap();
        assert_eq!(p.bandwidth_bits_per_s, Some(2_500_000));
        // Custom profiles print in a form that parses back to the same value.
        for text in [
            "bw=1gbps,lat=5ms",
            "lat=7us",
            "bw=123bps",
            "slow,bw=unlimited",
        ] {
            let p: NetProfile = text.parse().unwrap();
            assert_eq!(p.to_string().parse::<NetProfile>().unwrap(), p, "{text}");
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        for bad in [
            "",
            "fast",
            "bw=",
            "bw=-5mbps",
            "bw=0",
            "lat=5",
            "lat=xms",
            "lat=2h",
            "bw=1gbps;lat=1ms",
        ] {
            let e = bad.parse::<NetProfile>().unwrap_err();
            assert!(
                e.to_string().contains("invalid network profile"),
                "{bad}: {e}"
            );
        }
        let e = "lat=5".parse::<NetProfile>().unwrap_err();
        assert!(e.reason.contains("unit"), "{e}");
    }

    #[test]
    fn serialisation_time_is_exact() {
        assert_eq!(
            NetProfile::slow().serialisation_time(1_000_000),
            Duration::from_millis(80)
        );
        assert_eq!(
            NetProfile::wan().serialisation_time(50),
            Duration::from_nanos(1000)
        );
        assert_eq!(
            NetProfile::none().serialisation_time(1 << 30),
            Duration::ZERO
        );
    }

    #[test]
    fn shaper_serialises_bandwidth_but_pipelines_latency() {
        let profile = NetProfile {
            bandwidth_bits_per_s: Some(8_000_000),
            one_way_latency: Duration::from_millis(10),
        };
        let mut s = LinkShaper::new(profile);
        let t0 = Instant::now();
        // 1000 bytes at 8 Mbps = 1 ms on the link, then 10 ms of flight.
        assert_eq!(s.schedule_at(t0, 1000), t0 + Duration::from_millis(11));
        // A second chunk sent at the same instant waits for the link, not for the latency.
        assert_eq!(s.schedule_at(t0, 1000), t0 + Duration::from_millis(12));
        // After the link has gone idle, a chunk starts at its own flush time.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(s.schedule_at(later, 0), later + Duration::from_millis(10));
    }

    #[test]
    fn none_profile_adds_no_delay() {
        let mut s = LinkShaper::new(NetProfile::none());
        let t0 = Instant::now();
        for bytes in [0, 1, 1 << 20, 1 << 30] {
            assert_eq!(s.schedule_at(t0, bytes), t0);
        }
    }

    #[test]
    fn sleep_until_reaches_deadline() {
        let deadline = Instant::now() + Duration::from_millis(3);
        sleep_until(deadline);
        assert!(Instant::now() >= deadline);
        // A deadline in the past returns at once.
        sleep_until(Instant::now() - Duration::from_millis(1));
    }
}
