//! Conversions between the agent's `chrono` times and the Kubernetes
//! `Time` (a `jiff` timestamp) used in object status.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A chrono time as a Kubernetes `Time`, truncated to the second as the API
/// server stores it anyway.
pub fn to_k8s(t: DateTime<Utc>) -> Time {
    Time(Timestamp::new(t.timestamp(), 0).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A Kubernetes `Time` as a chrono time.
pub fn from_k8s(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_second_precision() {
        let t = DateTime::from_timestamp(1_700_000_123, 0).unwrap();
        assert_eq!(from_k8s(&to_k8s(t)), t);
    }
}
