//! HTTP/2 flow control shared by our servers and the agent client.
//!
//! One connection multiplexes many streams: every exec, download and upload
//! between an access-server replica and an agent shares one. HTTP/2 bounds
//! unread data twice, per stream and per connection. With a connection
//! window smaller than the sum of its streams' windows (hyper's defaults:
//! 1 MiB and 1 MiB on a server, 5 MiB and 2 MiB on a client), a stream
//! whose reader stalls (stdin a process never reads, a download its client
//! stopped reading) keeps its unread data, that data counts against the
//! connection, and after one to three such streams no other stream on the
//! connection moves. So the connection window here covers every stream's
//! whole window: a stalled stream only ever stalls itself, and the data
//! held for stalled streams stays bounded by [`MAX_STREAMS`] times
//! [`STREAM_WINDOW`].

/// What one stream may have in flight unread: 256 KiB, still hundreds of
/// MB/s over a cluster network's round trip.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// Streams a server lets one connection have open at once. An agent
/// carries every attached exec and file transfer of its sandboxes to one
/// access-server replica on one connection; past this, new requests wait.
pub const MAX_STREAMS: u32 = 512;

/// The connection's window: every stream's whole window (128 MiB), so no
/// set of stalled streams can use it up.
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_STREAMS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_window_is_a_valid_http2_window() {
        // RFC 9113 §6.9.1: at most 2^31 - 1.
        assert!(u64::from(CONNECTION_WINDOW) < 1 << 31);
        assert_eq!(
            u64::from(CONNECTION_WINDOW),
            u64::from(STREAM_WINDOW) * u64::from(MAX_STREAMS)
        );
    }
}
