//! The dealer's queueing, remote serving and error paths.

use comet_core::{PartyId, Prg};
use comet_dealer::dealer::CorrelationSourceExt;
use comet_dealer::kinds::beaver::BeaverTriple;
use comet_dealer::kinds::matmul::{MatmulMask, MatmulParams};
use comet_dealer::{
    encode_request, CorrelationSource, Dealer, DealerError, InProcessDealer, RemoteSource,
};
use comet_net::memory_pair;

#[test]
fn halves_of_a_triple_reconstruct_a_product() {
    let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([9; 16])));
    let mut s0 = dealer.source(PartyId::P0);
    let mut s1 = dealer.source(PartyId::P1);
    // P1 asks first: order between servers must not matter.
    let t1: BeaverTriple = s1.fetch(PartyId::P1, &50).unwrap();
    let t0: BeaverTriple = s0.fetch(PartyId::P0, &50).unwrap();
    for i in 0..50 {
        let a = t0.a[i].wrapping_add(t1.a[i]);
        let b = t0.b[i].wrapping_add(t1.b[i]);
        assert_eq!(t0.c[i].wrapping_add(t1.c[i]), a.wrapping_mul(b));
    }
    // P0's half is three seeds; P1's carries c explicitly.
    assert!(s0.meter().total().bytes_received < 100);
    assert!(s1.meter().total().bytes_received > 400);
}

#[test]
fn diverging_requests_are_out_of_sync() {
    let dealer = InProcessDealer::new(Dealer::new());
    let mut s0 = dealer.source(PartyId::P0);
    let mut s1 = dealer.source(PartyId::P1);
    let _: BeaverTriple = s0.fetch(PartyId::P0, &4).unwrap();
    let err = s1.fetch::<BeaverTriple>(PartyId::P1, &5).unwrap_err();
    assert!(matches!(err, DealerError::OutOfSync { .. }), "{err}");
}

#[test]
fn bad_requests_are_clear_errors() {
    let dealer = InProcessDealer::new(Dealer::new());
    let mut s0 = dealer.source(PartyId::P0);
    assert!(matches!(s0.fetch_raw(&[]), Err(DealerError::Malformed(_))));
    assert!(matches!(
        s0.fetch_raw(&[200]),
        Err(DealerError::UnknownKind(200))
    ));
    assert!(matches!(
        s0.fetch_raw(&[2, 1]),
        Err(DealerError::Malformed(_))
    ));
    assert!(matches!(
        s0.fetch::<BeaverTriple>(PartyId::P0, &0),
        Err(DealerError::InvalidParams(_))
    ));
    let params = MatmulParams {
        m: 1,
        k: 3,
        weights: vec![(comet_dealer::WeightId(7), 2)],
    };
    assert!(matches!(
        s0.fetch::<MatmulMask>(PartyId::P0, &params),
        Err(DealerError::UnknownWeight(7))
    ));
    // A truncated half is a decoding error, not a panic.
    let half = Dealer::new()
        .serve(PartyId::P1, &encode_request::<BeaverTriple>(&8))
        .unwrap();
    let cut = &half[..half.len() - 3];
    assert!(<BeaverTriple as comet_dealer::CorrelationKind>::decode(PartyId::P1, &8, cut).is_err());
}

#[test]
fn remote_dealer_serves_both_servers_over_channels() {
    let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([1; 16])));
    let w: Vec<u64> = (0..12).collect();
    let views = dealer.with(|d| d.register_weight(&w, 4, 3));
    let (mut d0, c0) = memory_pair();
    let (mut d1, c1) = memory_pair();
    let shared = dealer.shared();
    let shared2 = dealer.shared();
    let t0 = std::thread::spawn(move || comet_dealer::serve_party(shared, PartyId::P0, &mut d0));
    let t1 = std::thread::spawn(move || comet_dealer::serve_party(shared2, PartyId::P1, &mut d1));
    let params = MatmulParams {
        m: 2,
        k: 4,
        weights: vec![(views[0].id, 3)],
    };
    let mut r0 = RemoteSource::new(Box::new(c0));
    let mut r1 = RemoteSource::new(Box::new(c1));
    let h0: MatmulMask = r0.fetch(PartyId::P0, &params).unwrap();
    let h1: MatmulMask = r1.fetch(PartyId::P1, &params).unwrap();
    let a = comet_core::ring::add(&h0.a, &h1.a);
    let c = comet_core::ring::add(&h0.c[0], &h1.c[0]);
    let b = comet_core::ring::add(&views[0].mask_share, &views[1].mask_share);
    assert_eq!(c, comet_core::matmul::matmul_naive(&a, &b, 2, 4, 3));
    // An error at the dealer reaches the server as a clear message.
    let bad = MatmulParams {
        m: 2,
        k: 5,
        weights: vec![(views[0].id, 3)],
    };
    let err = r0.fetch::<MatmulMask>(PartyId::P0, &bad).unwrap_err();
    assert!(err.to_string().contains("dealer refused"), "{err}");
    drop(r0);
    drop(r1);
    assert!(t0.join().unwrap().is_err());
    t1.join().unwrap().unwrap();
}
