//! Runs both servers of a session in one process, for tests and benchmarks.

use crate::{Party, ProtocolError};
use comet_core::{FixedPoint, PartyId, Prg};
use comet_dealer::InProcessDealer;
use comet_net::memory_pair_shaped;
use comet_net::shaping::NetProfile;

/// Splits `x` into two additive shares, indexed by party.
pub fn share_for_test(x: &[u64], prg: &mut Prg) -> [Vec<u64>; 2] {
    let (a, b) = comet_core::share::share(x, prg);
    [a, b]
}

/// Runs `f` as P0 and as P1 on two threads connected in memory, with correlations from
/// `dealer`, in the default fixed-point format; returns both results.
pub fn run_pair<R: Send>(
    dealer: &InProcessDealer,
    f: impl Fn(&mut Party) -> Result<R, ProtocolError> + Sync,
) -> (Result<R, ProtocolError>, Result<R, ProtocolError>) {
    run_pair_with(dealer, FixedPoint::default(), f)
}

/// Like [`run_pair`] with an explicit fixed-point format.
pub fn run_pair_with<R: Send>(
    dealer: &InProcessDealer,
    fp: FixedPoint,
    f: impl Fn(&mut Party) -> Result<R, ProtocolError> + Sync,
) -> (Result<R, ProtocolError>, Result<R, ProtocolError>) {
    run_pair_shaped(dealer, fp, NetProfile::none(), f)
}

/// Like [`run_pair_with`] over a link shaped by `profile` (bandwidth and latency).
pub fn run_pair_shaped<R: Send>(
    dealer: &InProcessDealer,
    fp: FixedPoint,
    profile: NetProfile,
    f: impl Fn(&mut Party) -> Result<R, ProtocolError> + Sync,
) -> (Result<R, ProtocolError>, Result<R, ProtocolError>) {
    let (c0, c1) = memory_pair_shaped(profile);
    let mut p0 = Party::new(
        PartyId::P0,
        Box::new(c0),
        Box::new(dealer.source(PartyId::P0)),
        fp,
    );
    let mut p1 = Party::new(
        PartyId::P1,
        Box::new(c1),
        Box::new(dealer.source(PartyId::P1)),
        fp,
    );
    std::thread::scope(|s| {
        let f = &f;
        let h1 = s.spawn(move || {
            let r = f(&mut p1);
            drop(p1);
            r
        });
        let r0 = f(&mut p0);
        // Dropping P0's endpoint lets P1 fail fast instead of waiting for a timeout.
        drop(p0);
        let r1 = h1
            .join()
            .unwrap_or_else(|_| Err(ProtocolError::Shape("P1 panicked".into())));
        (r0, r1)
    })
}
