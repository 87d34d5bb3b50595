//! The dealer as a separate process: each server talks to it over its own channel.
//!
//! Reply format: one status byte (0 = ok, 1 = error) then the half or a UTF-8 error text.

use crate::{CorrelationSource, Dealer, DealerError};
use comet_core::PartyId;
use comet_net::{Channel, CostMeter, NetError};
use std::sync::{Arc, Mutex};

const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;

/// A server's link to a remote dealer.
pub struct RemoteSource {
    chan: Box<dyn Channel>,
}

impl RemoteSource {
    /// Uses `chan` (already connected and authenticated) to reach the dealer.
    pub fn new(chan: Box<dyn Channel>) -> Self {
        Self { chan }
    }
}

impl CorrelationSource for RemoteSource {
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        self.chan.send(request)?;
        self.chan.flush()?;
        let mut reply = self.chan.recv()?;
        match reply.first() {
            Some(&STATUS_OK) => {
                reply.remove(0);
                Ok(reply)
            }
            Some(&STATUS_ERROR) => Err(DealerError::Malformed(format!(
                "dealer refused the request: {}",
                String::from_utf8_lossy(&reply[1..])
            ))),
            _ => Err(DealerError::Malformed(
                "dealer reply without a valid status byte".into(),
            )),
        }
    }

    fn meter(&self) -> &CostMeter {
        self.chan.meter()
    }
}

/// Serves one server's requests until it closes the channel. Errors in a request are sent
/// back to the server (and returned) so both ends stop with the same cause.
pub fn serve_party(
    dealer: Arc<Mutex<Dealer>>,
    party: PartyId,
    chan: &mut dyn Channel,
) -> Result<(), DealerError> {
    loop {
        let request = match chan.recv() {
            Ok(r) => r,
            Err(NetError::Closed(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let answer = dealer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serve(party, &request);
        match answer {
            Ok(half) => {
                let mut msg = Vec::with_capacity(half.len() + 1);
                msg.push(STATUS_OK);
                msg.extend_from_slice(&half);
                chan.send(&msg)?;
                chan.flush()?;
            }
            Err(err) => {
                let mut msg = vec![STATUS_ERROR];
                msg.extend_from_slice(err.to_string().as_bytes());
                chan.send(&msg)?;
                chan.flush()?;
                return Err(err);
            }
        }
    }
}
