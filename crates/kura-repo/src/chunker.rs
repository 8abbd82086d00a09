//! Cutting data into chunks.
//!
//! - **File contents**: FastCDC (2020 variant, normalization level 1) with the repository's
//!   min/avg/max (default 256 KiB / 1 MiB / 4 MiB, fixed at `init`) and a gear table perturbed
//!   by the repository's chunker seed. Boundaries depend only on content, so an insertion early
//!   in a file shifts at most a couple of chunks.
//! - **Images and block devices**: fixed 4 MiB chunks aligned to offsets, so chunk *i* always
//!   covers bytes `[i·4 MiB, (i+1)·4 MiB)` and a changed block maps to exactly one chunk — the
//!   property the volume engine's changed-block tracking relies on.
//!
//! The streaming chunker reads into a buffer of twice the maximum chunk size and only moves
//! the unconsumed tail to the front when less than one maximum chunk remains; it never holds
//! more than that buffer, whatever the file size.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Fixed chunk size of images and block devices.
pub const FIXED_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// FastCDC parameters; stored in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Reject parameters FastCDC cannot use (it would panic or misbehave on them).
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX).contains(&min)
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg)
            && (fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX).contains(&max)
            && avg.is_power_of_two()
            && min % 2 == 0
            && max % 2 == 0
            && min < avg
            && avg < max;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "invalid chunker parameters min={min} avg={avg} max={max}: need \
                 64 ≤ min < avg < max ≤ 16 MiB, avg a power of two ≥ 256, min and max even"
            )))
        }
    }
}

/// Precomputed FastCDC state for one repository (masks and seeded gear tables).
#[derive(Clone)]
pub struct Cdc {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
}

impl Cdc {
    pub fn new(params: ChunkerParams, seed: u64) -> Result<Cdc> {
        params.validate()?;
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Ok(Cdc {
            params,
            mask_s,
            mask_l,
            gear: gear.into_owned(),
            gear_ls: gear_ls.into_owned(),
        })
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the next chunk at the start of `data`. `data` must hold at least `max` bytes
    /// unless it is the end of the input.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, n) = cut_gear(
            data,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n
    }

    /// Chunk lengths of a whole in-memory buffer (reference for tests and small inputs).
    pub fn boundaries(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.cut(data);
            out.push(n);
            data = &data[n..];
        }
        out
    }

    /// A streaming chunker over `reader`.
    pub fn stream<R: Read>(&self, reader: R) -> ChunkStream<'_, R> {
        self.stream_with_buffer(reader, Vec::new())
    }

    /// A streaming chunker reusing `buf` as its window (resized to 2 × max); get it back with
    /// [`ChunkStream::into_buffer`]. Saves a large allocation per file.
    pub fn stream_with_buffer<R: Read>(&self, reader: R, mut buf: Vec<u8>) -> ChunkStream<'_, R> {
        buf.resize(2 * self.params.max as usize, 0);
        ChunkStream {
            cdc: self,
            reader,
            buf,
            start: 0,
            end: 0,
            eof: false,
        }
    }
}

/// Iterator of chunks (owned buffers) read from a `Read`.
pub struct ChunkStream<'a, R> {
    cdc: &'a Cdc,
    reader: R,
    /// Fixed-size window of 2 × max; `buf[start..end]` is read but not yet chunked.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> ChunkStream<'_, R> {
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Give back the window buffer for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Next chunk, or `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.eof && self.end - self.start < self.cdc.params.max as usize {
            self.fill()?;
        }
        let avail = &self.buf[self.start..self.end];
        if avail.is_empty() {
            return Ok(None);
        }
        let n = self.cdc.cut(avail);
        let chunk = avail[..n].to_vec();
        self.start += n;
        Ok(Some(chunk))
    }
}

impl<R: Read> Iterator for ChunkStream<'_, R> {
    type Item = io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// True if every byte is zero. Checked 16 bytes at a time; the compiler vectorises it.
pub fn is_zero(data: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe { data.align_to::<u128>() };
    prefix.iter().all(|&b| b == 0)
        && suffix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns data in the given piece sizes (to exercise partial reads).
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        i: usize,
    }
    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let want = self
                .sizes
                .get(self.i % self.sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            self.i += 1;
            let n = want.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn small() -> ChunkerParams {
        ChunkerParams {
            min: 64,
            avg: 256,
            max: 1024,
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn stream_equals_whole_buffer_and_respects_bounds(
            len in 0usize..20_000,
            data_seed in any::<u64>(),
            cdc_seed in any::<u64>(),
            sizes in proptest::collection::vec(1usize..3000, 1..8),
        ) {
            let data = pseudo_random(len, data_seed);
            let cdc = Cdc::new(small(), cdc_seed).unwrap();
            let whole = cdc.boundaries(&data);
            let streamed: Vec<Vec<u8>> = cdc
                .stream(Pieces { data: &data, sizes, i: 0 })
                .collect::<io::Result<_>>()
                .unwrap();
            let lens: Vec<usize> = streamed.iter().map(|c| c.len()).collect();
            prop_assert_eq!(&lens, &whole);
            prop_assert_eq!(streamed.concat(), data.clone());
            for (i, n) in lens.iter().enumerate() {
                prop_assert!(*n <= 1024);
                if i + 1 < lens.len() {
                    prop_assert!(*n >= 64);
                }
            }
        }

        #[test]
        fn boundaries_resynchronise_after_an_insertion(
            data_seed in any::<u64>(),
            at in 0usize..30_000,
            insert in proptest::collection::vec(any::<u8>(), 1..50),
        ) {
            let data = pseudo_random(60_000, data_seed);
            let cdc = Cdc::new(small(), 7).unwrap();
            let mut edited = data[..at].to_vec();
            edited.extend_from_slice(&insert);
            edited.extend_from_slice(&data[at..]);
            let set = |d: &[u8]| {
                let mut pos = 0usize;
                let mut v = Vec::new();
                for n in cdc.boundaries(d) { pos += n; v.push(pos); }
                v
            };
            // Content-defined: once the two streams cut at the same place after the edit,
            // every later boundary is the same (shifted). Where they meet again depends on
            // forced cuts at the maximum size, so only a loose bound applies to that.
            let a: Vec<usize> = set(&data).into_iter().filter(|p| *p > at).collect();
            let b: Vec<usize> = set(&edited).into_iter().filter(|p| *p > at + insert.len()).map(|p| p - insert.len()).collect();
            let first = a.iter().find(|p| b.contains(p)).copied();
            prop_assert!(first.is_some_and(|f| f < at + 20_000), "no common boundary soon after the edit: {:?}", first);
            let f = first.unwrap_or_default();
            let ta: Vec<usize> = a.iter().copied().filter(|p| *p >= f).collect();
            let tb: Vec<usize> = b.iter().copied().filter(|p| *p >= f).collect();
            prop_assert_eq!(ta, tb);
        }
    }

    #[test]
    fn different_seeds_cut_differently() {
        let data = pseudo_random(200_000, 1);
        let a = Cdc::new(small(), 1).unwrap().boundaries(&data);
        let b = Cdc::new(small(), 2).unwrap().boundaries(&data);
        assert_ne!(a, b);
    }

    #[test]
    fn invalid_params_are_errors_not_panics() {
        for p in [
            ChunkerParams {
                min: 0,
                avg: 256,
                max: 1024,
            },
            ChunkerParams {
                min: 512,
                avg: 256,
                max: 1024,
            },
            ChunkerParams {
                min: 64,
                avg: 300,
                max: 1024,
            },
            ChunkerParams {
                min: 64,
                avg: 256,
                max: 64 << 20,
            },
        ] {
            assert!(Cdc::new(p, 0).is_err(), "{p:?}");
        }
        ChunkerParams::default().validate().unwrap();
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        assert!(is_zero(&v[1..]));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!is_zero(&v[1..]));
        assert!(is_zero(&[]));
    }
}
