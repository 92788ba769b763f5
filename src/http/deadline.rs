//! When registry work for a request must end. The API server appends `?timeout=10s` (its
//! `timeoutSeconds` for the webhook) to every call: the answer must leave before that, so the
//! registry adapter stops waiting [`DEADLINE_MARGIN`] earlier. Calls without it (the
//! ImageReview plugin, other clients) get `--verify-timeout`.

use std::time::{Duration, Instant};

use crate::evidence::Deadline;

/// Time kept between the end of registry work and the API server's timeout, to decide, write
/// the answer and send it: a decision takes microseconds, so one second covers a loaded node's
/// scheduling delays and the network back to the API server.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The longest `?timeout=` taken as it is. The API server allows at most 30 s; a larger value
/// is not the API server's, and `--verify-timeout` applies instead.
const MAX_API_SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadline for a request that arrived at `arrived` with the query string `query`.
pub fn deadline(query: &str, arrived: Instant, verify_timeout: Duration) -> Deadline {
    let budget = match api_server_timeout(query) {
        Some(timeout) => timeout.saturating_sub(DEADLINE_MARGIN),
        None => verify_timeout,
    };
    Deadline {
        at: arrived + budget,
        budget,
    }
}

/// The `timeout` parameter of a query string, when it is a Go duration of at most
/// [`MAX_API_SERVER_TIMEOUT`].
pub fn api_server_timeout(query: &str) -> Option<Duration> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))?;
    go_duration(value).filter(|d| !d.is_zero() && *d <= MAX_API_SERVER_TIMEOUT)
}

/// Parses a Go duration as `time.Duration.String` writes it (`10s`, `1m0s`, `1.5s`, `500ms`).
fn go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = 0.0_f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default `--verify-timeout`.
    const EIGHT: Duration = Duration::from_secs(8);

    #[test]
    fn the_api_servers_timeout_less_the_margin() {
        let now = Instant::now();
        let d = deadline("timeout=10s", now, EIGHT);
        assert_eq!(d.budget, Duration::from_secs(9));
        assert_eq!(d.at, now + Duration::from_secs(9));
        assert_eq!(
            deadline("a=b&timeout=30s", now, EIGHT).budget,
            Duration::from_secs(29)
        );
        assert_eq!(
            deadline("timeout=1s", now, EIGHT).budget,
            Duration::ZERO,
            "nothing left for the registry: only cached outcomes can count"
        );
        for fallback in [
            "",
            "timeout=",
            "timeout=abc",
            "timeout=10",
            "timeout=2m",
            "timeout=0s",
            "x=1",
        ] {
            assert_eq!(
                deadline(fallback, now, Duration::from_secs(8)).budget,
                Duration::from_secs(8),
                "{fallback:?}"
            );
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        for bad in ["", "s", "10", "10x", "-1s", "1..2s"] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }
}
