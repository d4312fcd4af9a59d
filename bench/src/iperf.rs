//! The parts of `iperf3 -J` output the benchmark reads, deserialized with serde.
//!
//! Only the end-of-test summaries are modelled; every other field is ignored, so newer
//! iperf3 versions that add fields still parse.

use serde::Deserialize;

/// Why an iperf3 report could not be turned into a number.
#[derive(Debug, thiserror::Error)]
pub enum IperfError {
    #[error("iperf3 output is not the JSON report expected: {0}")]
    Json(#[from] serde_json::Error),
    /// iperf3 itself reported a failure (it sets `"error"` and may still exit 0).
    #[error("iperf3 reported: {0}")]
    Reported(String),
    #[error("iperf3 report has no `end.{0}` summary (was the test interrupted?)")]
    MissingSummary(&'static str),
    #[error("iperf3 report: {0}")]
    Implausible(String),
}

/// A whole `iperf3 -J` document (client side).
#[derive(Debug, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub end: End,
    /// Present when the test failed (e.g. "unable to connect to server: ...").
    #[serde(default)]
    pub error: Option<String>,
}

/// `end`: the summaries. Both TCP and UDP tests (iperf3 ≥ 3.10) carry `sum_received`,
/// the data receiver's view, which is the one that counts.
#[derive(Debug, Default, Deserialize)]
pub struct End {
    #[serde(default)]
    pub sum_received: Option<Summary>,
}

/// One summary block. UDP-only fields are absent in TCP reports.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Summary {
    pub seconds: f64,
    pub bytes: u64,
    pub bits_per_second: f64,
    /// UDP: datagrams the sender numbered (as seen by the receiver's sequence numbers).
    #[serde(default)]
    pub packets: Option<u64>,
    /// UDP: datagrams missing at the receiver.
    #[serde(default)]
    pub lost_packets: Option<u64>,
}

impl Report {
    /// Parses iperf3's JSON and fails with iperf3's own message if it reported an error.
    pub fn parse(json: &str) -> Result<Report, IperfError> {
        let report: Report = serde_json::from_str(json)?;
        match report.error {
            Some(error) => Err(IperfError::Reported(error)),
            None => Ok(report),
        }
    }

    /// What the receiving side got: `end.sum_received` (for `-R` too: iperf3 reports
    /// from the data's point of view, the client then being the receiver).
    pub fn received(&self) -> Result<Summary, IperfError> {
        self.end
            .sum_received
            .ok_or(IperfError::MissingSummary("sum_received"))
    }

    /// TCP goodput at the receiver, Gbit/s.
    pub fn tcp_gbits(&self) -> Result<f64, IperfError> {
        let received = self.received()?;
        if received.bytes == 0 || received.bits_per_second <= 0.0 {
            return Err(IperfError::Implausible("no bytes were received".into()));
        }
        Ok(received.bits_per_second / 1e9)
    }

    /// UDP datagrams *delivered* to the receiver per second, in thousands: datagrams
    /// sent minus datagrams lost, over the receiver's measuring time.
    pub fn udp_kpps_delivered(&self) -> Result<f64, IperfError> {
        let received = self.received()?;
        let (Some(packets), Some(lost)) = (received.packets, received.lost_packets) else {
            return Err(IperfError::Implausible(
                "`end.sum_received` has no packets/lost_packets (not a UDP test?)".into(),
            ));
        };
        let delivered = packets.saturating_sub(lost);
        if delivered == 0 || received.seconds <= 0.0 {
            return Err(IperfError::Implausible(format!(
                "no datagram was delivered ({packets} sent, {lost} lost)"
            )));
        }
        Ok(delivered as f64 / received.seconds / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on the bench machine: `iperf3 -c ... -t 1 -J` between two namespaces
    // joined by a veth pair (iperf 3.12).
    const TCP_1: &str = include_str!("fixtures/iperf3-tcp-1.json");
    const TCP_4: &str = include_str!("fixtures/iperf3-tcp-4.json");
    const TCP_1_REV: &str = include_str!("fixtures/iperf3-tcp-1-rev.json");
    const UDP_64: &str = include_str!("fixtures/iperf3-udp64.json");
    const ERROR: &str = include_str!("fixtures/iperf3-error.json");

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(1.0)
    }

    #[test]
    fn tcp_throughput_is_the_receivers_rate() {
        let gbits = Report::parse(TCP_1).unwrap().tcp_gbits().unwrap();
        assert!(close(gbits, 19.1702849275984), "{gbits}");
    }

    #[test]
    fn four_streams_are_summed() {
        let gbits = Report::parse(TCP_4).unwrap().tcp_gbits().unwrap();
        assert!(close(gbits, 34.88386636873072), "{gbits}");
    }

    #[test]
    fn reverse_reports_the_data_receiver() {
        let gbits = Report::parse(TCP_1_REV).unwrap().tcp_gbits().unwrap();
        assert!(close(gbits, 19.882843961085518), "{gbits}");
    }

    #[test]
    fn udp_counts_delivered_datagrams_not_sent_ones() {
        let report = Report::parse(UDP_64).unwrap();
        let kpps = report.udp_kpps_delivered().unwrap();
        // 280020 numbered, 5786 lost, over 1.00006 s at the receiver.
        assert!(close(kpps, (280_020.0 - 5_786.0) / 1.00006 / 1e3), "{kpps}");
        // Cross-check with the bytes the receiver counted (64-byte datagrams).
        let received = report.received().unwrap();
        assert_eq!(received.bytes / 64, 280_020 - 5_786);
    }

    #[test]
    fn iperf_errors_are_surfaced_with_their_message() {
        let err = Report::parse(ERROR).unwrap_err();
        assert!(
            err.to_string()
                .contains("unable to connect to server: Network is unreachable"),
            "{err}"
        );
    }

    #[test]
    fn a_tcp_report_is_not_a_udp_result() {
        let err = Report::parse(TCP_1)
            .unwrap()
            .udp_kpps_delivered()
            .unwrap_err();
        assert!(err.to_string().contains("not a UDP test"), "{err}");
    }

    #[test]
    fn truncated_output_is_a_clear_error_not_a_panic() {
        let err = Report::parse(&TCP_1[..TCP_1.len() / 2]).unwrap_err();
        assert!(matches!(err, IperfError::Json(_)), "{err}");
        let err = Report::parse("{}").unwrap().tcp_gbits().unwrap_err();
        assert!(err.to_string().contains("sum_received"), "{err}");
    }
}
