//! Key generation, the same scheme as etcd's `benchmark` tool: a key is `key-size` bytes holding the
//! Go `binary.PutVarint` encoding (zigzag, then base-128 varint) of a number in `[0, key-space-size)`,
//! padded with zero bytes. Keys written by this tool are therefore byte-identical to etcd's.

use rand::Rng;

/// Go's zigzag mapping for a non-negative `int64`, as `binary.PutVarint` applies it.
fn zigzag(n: u64) -> u64 {
    n << 1
}

/// Number of bytes `binary.PutUvarint` needs for `v`.
fn uvarint_len(mut v: u64) -> usize {
    let mut len = 1;
    while v >= 0x80 {
        v >>= 7;
        len += 1;
    }
    len
}

/// Largest key-space size we accept: numbers must fit in a Go `int64`.
const MAX_KEY_SPACE: u64 = i64::MAX as u64;

/// Checks that every number in `[0, key_space_size)` encodes into `key_size` bytes.
pub fn check_key_space(key_size: usize, key_space_size: u64) -> Result<(), String> {
    if key_size == 0 {
        return Err("--key-size must be at least 1 (etcd rejects empty keys)".into());
    }
    if key_space_size == 0 {
        return Err("--key-space-size must be at least 1".into());
    }
    if key_space_size > MAX_KEY_SPACE {
        return Err(format!("--key-space-size must be at most {MAX_KEY_SPACE}"));
    }
    let need = uvarint_len(zigzag(key_space_size - 1));
    if need > key_size {
        return Err(format!(
            "--key-size {key_size} is too small for --key-space-size {key_space_size}: \
             keys need {need} bytes"
        ));
    }
    Ok(())
}

/// Encodes `n` into a key of exactly `key_size` bytes. The caller has validated the sizes with
/// [`check_key_space`]; a number that does not fit is truncated rather than panicking.
pub fn encode_key(n: u64, key_size: usize) -> Vec<u8> {
    let mut key = vec![0u8; key_size];
    let mut v = zigzag(n);
    let mut i = 0;
    while v >= 0x80 && i < key_size {
        key[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    if i < key_size {
        key[i] = v as u8;
    }
    key
}

/// Chooses key numbers for request `i`: sequential (`i mod space`) or uniformly random.
#[derive(Debug, Clone, Copy)]
pub struct KeyPicker {
    pub space: u64,
    pub sequential: bool,
}

impl KeyPicker {
    /// The key number for request `i`.
    pub fn pick<R: Rng>(&self, i: u64, rng: &mut R) -> u64 {
        if self.sequential {
            i % self.space
        } else {
            rng.random_range(0..self.space)
        }
    }

    /// `ops` distinct key numbers for transaction `i` (etcd rejects a txn that puts one key twice):
    /// consecutive numbers from a base chosen like [`KeyPicker::pick`], wrapping in the key space.
    /// Sequential mode gives etcd's `(i * ops + j) mod space`. Needs `ops <= space`.
    pub fn pick_txn<R: Rng>(&self, i: u64, ops: u64, rng: &mut R) -> Vec<u64> {
        let base = if self.sequential {
            i.wrapping_mul(ops) % self.space
        } else {
            rng.random_range(0..self.space)
        };
        (0..ops).map(|j| (base + j) % self.space).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn encodes_like_go_put_varint() {
        // binary.PutVarint(buf, 0) = [0x00]; 1 -> [0x02]; 63 -> [0x7e]; 64 -> [0x80 0x01];
        // 99999 -> zigzag 199998 = [0xbe 0x9a 0x0c].
        assert_eq!(encode_key(0, 8), vec![0; 8]);
        assert_eq!(encode_key(1, 4), vec![2, 0, 0, 0]);
        assert_eq!(encode_key(63, 2), vec![0x7e, 0]);
        assert_eq!(encode_key(64, 3), vec![0x80, 0x01, 0]);
        assert_eq!(encode_key(99_999, 8), vec![0xbe, 0x9a, 0x0c, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn keys_have_the_requested_size_and_are_distinct() {
        let keys: std::collections::HashSet<Vec<u8>> =
            (0..100_000).map(|n| encode_key(n, 8)).collect();
        assert_eq!(keys.len(), 100_000);
        assert!(keys.iter().all(|k| k.len() == 8));
    }

    #[test]
    fn key_space_must_fit_key_size() {
        assert!(check_key_space(8, 1).is_ok());
        assert!(check_key_space(1, 64).is_ok()); // 63 -> 126 fits one byte
        assert!(check_key_space(1, 65).is_err()); // 64 -> 128 needs two
        assert!(check_key_space(3, 1_048_576).is_ok());
        assert!(check_key_space(0, 1).is_err());
        assert!(check_key_space(8, 0).is_err());
        assert!(check_key_space(10, u64::MAX).is_err());
    }

    #[test]
    fn sequential_picker_wraps() {
        let p = KeyPicker {
            space: 3,
            sequential: true,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let got: Vec<u64> = (0..7).map(|i| p.pick(i, &mut rng)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(p.pick_txn(1, 2, &mut rng), vec![2, 0]);
    }

    #[test]
    fn random_picker_stays_in_space_and_txn_keys_are_distinct() {
        let p = KeyPicker {
            space: 10,
            sequential: false,
        };
        let mut rng = SmallRng::seed_from_u64(7);
        for i in 0..1000 {
            assert!(p.pick(i, &mut rng) < 10);
            let mut ks = p.pick_txn(i, 4, &mut rng);
            assert!(ks.iter().all(|&k| k < 10));
            ks.sort_unstable();
            ks.dedup();
            assert_eq!(ks.len(), 4);
        }
    }
}
