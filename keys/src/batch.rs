//! Batch verification of ed25519 signatures: one multiscalar multiplication
//! for a whole batch, with the terms of each signing key folded into one.
//!
//! The equation is ed25519-dalek's `verify_batch` (cofactored, a random
//! 128-bit weight `z_i` per signature):
//!
//! `[8]( -(Σ z_i s_i) B + Σ z_i R_i + Σ_A (Σ_{i by A} z_i h_i) A ) = 0`
//!
//! dalek keeps one `A` term per signature; a bus batch is nearly always one
//! sender's, so folding them leaves `n + 1 + keys` points where dalek has
//! `2n + 1`, and the points dropped are the ones with full-width scalars
//! (the `R_i` weights are 128-bit). `netsky bench bus` reports the cost:
//! 15-18 µs a signature in batches of 128 of one key, against 54-72 µs
//! for single checks, on the 2-core machine it was written on.
//!
//! The weights are derived from every input, as dalek derives them: from a
//! hash of all `h_i = H(R_i || A_i || M_i)` and all `s_i`, so a batch cannot
//! be chosen after its weights are known.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

use crate::{Domain, Signature, Verifier};

/// One signature to check in a batch: who signed, under which domain, what.
#[derive(Debug, Clone, Copy)]
pub struct ToVerify<'a> {
    /// The signer's prepared key.
    pub verifier: &'a Verifier,
    /// The domain the record was signed under.
    pub domain: Domain,
    /// The signed body (without the domain).
    pub body: &'a [u8],
    /// The signature.
    pub sig: &'a Signature,
}

/// Whether the 32 bytes encode a field element below p = 2^255 - 19 (the
/// sign bit aside): the strict check refuses the 19 other encodings of y,
/// since it compares R as bytes.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    // y >= p only when y is 2^255 - 19 .. 2^255 - 1: all 0xff but the top
    // byte (0x7f) and the bottom (0xed or more).
    !(y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed)
}

/// Checks many signatures at once: `true` only when every one verifies.
///
/// Costs a fraction of single checks per signature (see the module docs).
/// It checks the cofactored equation where [`Verifier::verify`] is strict
/// and cofactorless; it refuses what the strict check refuses on sight
/// (weak keys, small-order or non-canonical `R`, non-canonical `s`), so the
/// two differ only on signatures whose `R` has a small-order part, which
/// only the key's holder can make: a forger gains nothing. When it says
/// `false`, check each with [`Verifier::verify`] to learn which failed.
pub fn verify_all(items: &[ToVerify<'_>]) -> bool {
    if items.is_empty() {
        return true;
    }
    let n = items.len();
    let mut hrams: Vec<[u8; 64]> = Vec::with_capacity(n);
    let mut ss: Vec<Scalar> = Vec::with_capacity(n);
    let mut rs: Vec<EdwardsPoint> = Vec::with_capacity(n);
    for i in items {
        let bytes = i.sig.to_bytes();
        let (mut r_bytes, mut s_bytes) = ([0u8; 32], [0u8; 32]);
        r_bytes.copy_from_slice(&bytes[..32]);
        s_bytes.copy_from_slice(&bytes[32..]);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        if !canonical_y(&r_bytes) {
            return false;
        }
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(i.verifier.key.as_bytes());
        h.update(i.domain.0);
        h.update(i.body);
        hrams.push(h.finalize().into());
        ss.push(s);
        rs.push(r);
    }

    // The weights, from a hash over every input (dalek's transcript, in SHA-512).
    let mut t = Sha512::new();
    t.update(b"netsky batch verification weights v1\0");
    for (h, i) in hrams.iter().zip(items) {
        t.update(h);
        t.update(&i.sig.to_bytes()[32..]);
    }
    let seed: [u8; 64] = t.finalize().into();
    let mut zs: Vec<Scalar> = Vec::with_capacity(n);
    for block in 0..n.div_ceil(4) as u64 {
        let mut h = Sha512::new();
        h.update(seed);
        h.update(block.to_le_bytes());
        let out: [u8; 64] = h.finalize().into();
        for w in out.chunks_exact(16).take(n - zs.len()) {
            let mut z = [0u8; 16];
            z.copy_from_slice(w);
            zs.push(Scalar::from(u128::from_le_bytes(z)));
        }
    }

    let mut b_coefficient = Scalar::ZERO;
    // (key bytes, its point, Σ z_i h_i of its signatures); a batch has few keys.
    let mut keys: Vec<(&[u8; 32], EdwardsPoint, Scalar)> = Vec::new();
    for (((i, h), s), z) in items.iter().zip(&hrams).zip(&ss).zip(&zs) {
        b_coefficient += z * s;
        let zh = z * Scalar::from_bytes_mod_order_wide(h);
        let k = i.verifier.key.as_bytes();
        match keys.iter_mut().find(|e| e.0 == k) {
            Some(e) => e.2 += zh,
            // Weak (small-order) keys are refused, once per key.
            None if i.verifier.key.is_weak() => return false,
            None => keys.push((k, i.verifier.key.to_edwards(), zh)),
        }
    }
    let scalars = std::iter::once(-b_coefficient).chain(zs).chain(keys.iter().map(|e| e.2));
    let points = std::iter::once(ED25519_BASEPOINT_POINT).chain(rs).chain(keys.iter().map(|e| e.1));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, SecretKey, sign};

    const A: Domain = Domain(b"netsky/test-a/v1\0");
    const B: Domain = Domain(b"netsky/test-b/v1\0");

    fn check(items: &[(&Verifier, Domain, &[u8], &Signature)]) -> bool {
        let batch: Vec<ToVerify<'_>> = items
            .iter()
            .map(|(verifier, domain, body, sig)| ToVerify { verifier, domain: *domain, body, sig })
            .collect();
        verify_all(&batch)
    }

    #[test]
    fn a_batch_verifies_only_when_every_signature_does() {
        let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
        let (v1, v2) = (Verifier::new(k1.public()).unwrap(), Verifier::new(k2.public()).unwrap());
        let bodies: Vec<Vec<u8>> = (0..40).map(|i| format!("body {i}").into_bytes()).collect();
        let signer = |i: usize| if i.is_multiple_of(3) { (&k2, &v2) } else { (&k1, &v1) };
        let sigs: Vec<Signature> = bodies.iter().enumerate().map(|(i, b)| sign(signer(i).0, A, b)).collect();
        let items = |bodies: &[Vec<u8>], domain: Domain, sigs: &[Signature]| -> bool {
            let v: Vec<_> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| (signer(i).1, domain, b.as_slice(), &sigs[i]))
                .collect();
            check(&v)
        };
        assert!(items(&bodies, A, &sigs), "all good, two keys");
        assert!(check(&[]), "an empty batch has nothing wrong");
        assert!(items(&bodies[..1], A, &sigs), "a batch of one");
        let mut tampered = bodies.clone();
        tampered[17] = b"body 17!".to_vec();
        assert!(!items(&tampered, A, &sigs), "one tampered body");
        assert!(!items(&bodies, B, &sigs), "another domain");
        let mut swapped = sigs.clone();
        swapped.swap(4, 5);
        assert!(!items(&bodies, A, &swapped), "signatures swapped between bodies of one key");
        let mut swapped = sigs.clone();
        swapped.swap(3, 4);
        assert!(!items(&bodies, A, &swapped), "signatures swapped between keys");
        // Signed by k1 but presented as k2's: folding by key must not hide it.
        let wrong: Vec<_> =
            bodies.iter().enumerate().map(|(i, b)| (&v2, A, b.as_slice(), &sigs[i])).collect();
        assert!(!check(&wrong), "claimed by the wrong key");
    }

    #[test]
    fn every_single_bit_flip_of_a_signature_is_refused_as_the_strict_check_does() {
        let k = SecretKey::generate();
        let v = Verifier::new(k.public()).unwrap();
        let good = sign(&k, A, b"body");
        let other = sign(&k, A, b"other");
        for bit in 0..512 {
            let mut b = good.to_bytes();
            b[bit / 8] ^= 1 << (bit % 8);
            let bad = Signature::from_bytes(&b);
            assert_eq!(
                check(&[(&v, A, b"other", &other), (&v, A, b"body", &bad)]),
                v.verify(A, b"body", &bad).is_ok(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn random_batches_of_good_and_damaged_signatures_agree_with_the_strict_check() {
        let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
        let vs: Vec<Verifier> = keys.iter().map(|k| Verifier::new(k.public()).unwrap()).collect();
        // xorshift: reproducible choices without a dependency.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..150 {
            let n = 1 + next(12) as usize;
            let mut batch: Vec<(usize, Domain, Vec<u8>, Signature)> = Vec::new();
            for i in 0..n {
                let k = next(3) as usize;
                let body = format!("round {round} item {i}").into_bytes();
                let mut sig = sign(&keys[k], A, &body).to_bytes();
                let (mut body, mut domain, mut who) = (body, A, k);
                // One in four damaged, in one of several ways.
                if next(4) == 0 {
                    match next(4) {
                        0 => sig[next(64) as usize] ^= 1 << next(8),
                        1 => body.push(b'!'),
                        2 => domain = B,
                        _ => who = (k + 1) % 3,
                    }
                }
                batch.push((who, domain, body, Signature::from_bytes(&sig)));
            }
            let strict = batch.iter().all(|(w, d, b, s)| vs[*w].verify(*d, b, s).is_ok());
            let items: Vec<_> = batch.iter().map(|(w, d, b, s)| (&vs[*w], *d, b.as_slice(), s)).collect();
            assert_eq!(check(&items), strict, "round {round}");
        }
    }

    /// A key whose secret scalar the test knows, for signatures a real signer never makes.
    fn raw_key() -> (Scalar, Verifier) {
        let a = Scalar::from(0x1234_5678_9abc_def0_u64) * Scalar::from(977u64);
        let pk = (ED25519_BASEPOINT_POINT * a).compress().to_bytes();
        (a, Verifier::new(NodeId::from_bytes(&pk).unwrap()).unwrap())
    }

    fn raw_sign(a: Scalar, v: &Verifier, r: EdwardsPoint, nonce: Scalar, body: &[u8]) -> Signature {
        let r_bytes = r.compress().to_bytes();
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(v.key.as_bytes());
        h.update(A.0);
        h.update(body);
        let h = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = nonce + h * a;
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&r_bytes);
        b[32..].copy_from_slice(s.as_bytes());
        Signature::from_bytes(&b)
    }

    #[test]
    fn what_the_cofactored_equation_would_pass_but_the_strict_check_refuses_is_refused() {
        let (a, v) = raw_key();
        let nonce = Scalar::from(4242u64);
        let body: &[u8] = b"body";
        let good = raw_sign(a, &v, ED25519_BASEPOINT_POINT * nonce, nonce, body);
        assert!(v.verify(A, body, &good).is_ok());
        assert!(check(&[(&v, A, body, &good), (&v, A, body, &good)]), "the hand-made signature is sound");

        // s + l: the same scalar mod l, but not its canonical encoding.
        let mut b = good.to_bytes();
        // l = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let mut l = [0u8; 32];
        l[..16].copy_from_slice(&0x14def9dea2f79cd65812631a5cf5d3ed_u128.to_le_bytes());
        l[31] = 0x10;
        let mut carry = 0u16;
        for (x, y) in b[32..].iter_mut().zip(l) {
            let sum = *x as u16 + y as u16 + carry;
            *x = sum as u8;
            carry = sum >> 8;
        }
        let unreduced = Signature::from_bytes(&b);
        assert!(v.verify(A, body, &unreduced).is_err());
        assert!(!check(&[(&v, A, body, &good), (&v, A, body, &unreduced)]), "non-canonical s");

        // R of small order (a nonce of zero plus torsion): [8] of the equation is zero.
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let small = raw_sign(a, &v, torsion, Scalar::ZERO, body);
        assert!(v.verify(A, body, &small).is_err());
        assert!(!check(&[(&v, A, body, &good), (&v, A, body, &small)]), "small-order R");

        // A weak (small-order) key: s = r passes [8] of the equation whatever the body.
        let weak = Verifier::new(NodeId::from_bytes(&torsion.compress().to_bytes()).unwrap()).unwrap();
        let mut b = [0u8; 64];
        b[..32].copy_from_slice((ED25519_BASEPOINT_POINT * nonce).compress().as_bytes());
        b[32..].copy_from_slice(nonce.as_bytes());
        let forged = Signature::from_bytes(&b);
        assert!(weak.verify(A, body, &forged).is_err());
        assert!(!check(&[(&v, A, body, &good), (&weak, A, body, &forged)]), "weak key");
    }

    #[test]
    fn the_encodings_of_y_at_or_above_p_are_not_canonical() {
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed;
        assert!(!canonical_y(&p));
        p[0] = 0xec;
        assert!(canonical_y(&p), "p - 1");
        p[31] = 0xff;
        assert!(canonical_y(&p), "p - 1, sign bit set");
        assert!(canonical_y(&[0u8; 32]));
        assert!(!canonical_y(&[0xffu8; 32]));
    }
}
