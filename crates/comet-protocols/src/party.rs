//! One server's handle on a two-party session.

use crate::ProtocolError;
use comet_core::{FixedPoint, PartyId};
use comet_dealer::dealer::CorrelationSourceExt;
use comet_dealer::{CorrelationKind, CorrelationSource};
use comet_net::{Channel, ChannelExt, CostMeter, ScopeGuard};

/// A server in a two-party session: who it is, how it reaches the other server and the
/// dealer, and which fixed-point format values use.
pub struct Party {
    /// This server's identity.
    pub id: PartyId,
    /// Channel to the other server (online traffic).
    pub chan: Box<dyn Channel>,
    /// Source of correlated randomness (offline traffic).
    pub dealer: Box<dyn CorrelationSource>,
    /// Fixed-point format of secret values.
    pub fp: FixedPoint,
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party")
            .field("id", &self.id)
            .field("fp", &self.fp)
            .finish_non_exhaustive()
    }
}

impl Party {
    /// Assembles a party from its parts.
    pub fn new(
        id: PartyId,
        chan: Box<dyn Channel>,
        dealer: Box<dyn CorrelationSource>,
        fp: FixedPoint,
    ) -> Self {
        Self {
            id,
            chan,
            dealer,
            fp,
        }
    }

    /// True for P0 (the server that adds public constants).
    pub fn is_p0(&self) -> bool {
        self.id == PartyId::P0
    }

    /// Opens a cost scope on both the online and the offline meter.
    pub fn scope(&self, label: &str) -> (ScopeGuard, ScopeGuard) {
        (
            self.chan.meter().scope(label),
            self.dealer.meter().scope(label),
        )
    }

    /// Meter of the online traffic.
    pub fn online_meter(&self) -> &CostMeter {
        self.chan.meter()
    }

    /// Meter of the offline (dealer) traffic.
    pub fn offline_meter(&self) -> &CostMeter {
        self.dealer.meter()
    }

    /// Fetches this server's half of one correlation.
    pub fn correlation<K: CorrelationKind>(
        &mut self,
        params: &K::Params,
    ) -> Result<K, ProtocolError> {
        Ok(self.dealer.fetch::<K>(self.id, params)?)
    }

    /// Sends this server's values (reduced to `bits` bits) and returns the other server's:
    /// one round.
    pub fn exchange(&mut self, values: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
        Ok(self.chan.exchange_ring(values, bits)?)
    }

    /// Exchanges several vectors of different widths in one round.
    pub fn exchange_many(
        &mut self,
        parts: &[(&[u64], u32)],
    ) -> Result<Vec<Vec<u64>>, ProtocolError> {
        let mut w = comet_net::codec::Writer::new();
        for (values, bits) in parts {
            w.ring(values, *bits);
        }
        let reply = self.chan.exchange(&w.finish())?;
        let mut r = comet_net::codec::Reader::new(&reply);
        let mut out = Vec::with_capacity(parts.len());
        for (values, _) in parts {
            let theirs = r.ring()?;
            crate::error::check_len("peer's share", theirs.len(), values.len())?;
            out.push(theirs);
        }
        r.finish()?;
        Ok(out)
    }
}
