//! The closure pool: page-grown blocks, one owner each, a FIFO quarantine before reuse.

use crate::Mutex;
use std::collections::VecDeque;
use std::ptr::NonNull;

/// Where the pool's memory comes from. The edge maps anonymous pages that libffi may
/// write trampolines into and execute; tests use the heap.
pub trait PageSource {
    /// `len` bytes (a multiple of the page size), aligned to at least 8 bytes, that
    /// stay valid for the life of the process; `None` if the system refuses.
    fn map(&self, len: usize) -> Option<NonNull<u8>>;
}

/// The pool's fixed parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes per block (at the edge: `sizeof(ffi_closure)`), rounded up to a power of
    /// two (so that finding a block's state is a shift, not a division).
    pub block_size: usize,
    /// Bytes per page of the source.
    pub page_size: usize,
    /// How many freed blocks wait before the oldest of them may be handed out again.
    pub quarantine: usize,
}

impl PoolConfig {
    /// What a pool made with this configuration uses: the block size rounded up to a
    /// power of two (at least 8), pages at least one block big.
    pub fn normalized(self) -> PoolConfig {
        let block_size = self.block_size.max(8).next_power_of_two();
        PoolConfig { block_size, page_size: self.page_size.max(block_size), quarantine: self.quarantine }
    }
}

/// Why [`ClosurePool::free`] refused a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The block was already freed and has not been handed out since.
    DoubleFree,
    /// The pointer is not a block this pool handed out.
    Foreign,
}

/// Counts, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub live: usize,
    pub quarantined: usize,
    pub fresh: usize,
    pub mapped_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    Fresh,
    Live,
    Quarantined,
}

/// One growth's pages and the state of each of their blocks (one byte per block).
struct Mapping {
    base: usize,
    states: Vec<BlockState>,
}

struct PoolState {
    /// Never handed out; popped from the end (the lowest addresses go first).
    fresh: Vec<usize>,
    /// Freed, oldest at the front.
    quarantine: VecDeque<usize>,
    /// Every mapping, sorted by base address.
    mappings: Vec<Mapping>,
    live: usize,
    /// Pages mapped by the last growth; the next maps `1 + 1.3 * this` (cffi's rate).
    last_growth_pages: usize,
    mapped_bytes: usize,
}

impl PoolState {
    /// The state of the block at `addr`, if `addr` is the start of one of our blocks.
    fn state(&mut self, addr: usize, block_shift: u32) -> Option<&mut BlockState> {
        let after = self.mappings.partition_point(|m| m.base <= addr);
        let m = self.mappings.get_mut(after.checked_sub(1)?)?;
        let offset = addr - m.base;
        if offset & ((1 << block_shift) - 1) != 0 {
            return None;
        }
        m.states.get_mut(offset >> block_shift)
    }
}

/// Blocks of [`PoolConfig::block_size`] bytes, each owned by one caller at a time.
/// See the crate doc for the contract.
pub struct ClosurePool<S> {
    source: S,
    config: PoolConfig,
    /// log2 of the block size.
    block_shift: u32,
    state: Mutex<PoolState>,
}

impl<S: PageSource> ClosurePool<S> {
    pub fn new(source: S, config: PoolConfig) -> ClosurePool<S> {
        let config = config.normalized();
        ClosurePool {
            source,
            config,
            block_shift: config.block_size.trailing_zeros(),
            state: Mutex::new(PoolState {
                fresh: Vec::new(),
                quarantine: VecDeque::new(),
                mappings: Vec::new(),
                live: 0,
                last_growth_pages: 0,
                mapped_bytes: 0,
            }),
        }
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = PoolState> + '_ {
        // A panic under the lock leaves the state consistent (every mutation is one
        // container operation), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A block for exactly one owner, or `None` when the source refuses more memory
    /// and no quarantined block is left to reuse.
    ///
    /// Order of preference: the oldest quarantined block once more than
    /// `quarantine` wait; a fresh block; new pages; any quarantined block.
    pub fn alloc(&self) -> Option<NonNull<u8>> {
        let mut st = self.lock();
        let addr = if st.quarantine.len() > self.config.quarantine {
            st.quarantine.pop_front()
        } else if let Some(addr) = st.fresh.pop() {
            Some(addr)
        } else if self.grow(&mut st) {
            st.fresh.pop()
        } else {
            st.quarantine.pop_front()
        }?;
        *st.state(addr, self.block_shift).expect("a block of ours") = BlockState::Live;
        st.live += 1;
        NonNull::new(addr as *mut u8)
    }

    /// Gives `block` back. `kill` runs first, under the pool's lock, while the block is
    /// still owned by nobody else (at the edge: it points the trampoline at the "dead
    /// callback" target); then the block joins the back of the quarantine.
    pub fn free(&self, block: NonNull<u8>, kill: impl FnOnce(NonNull<u8>)) -> Result<(), FreeError> {
        let addr = block.as_ptr() as usize;
        let mut st = self.lock();
        let state = st.state(addr, self.block_shift).ok_or(FreeError::Foreign)?;
        match *state {
            BlockState::Live => {}
            BlockState::Quarantined => return Err(FreeError::DoubleFree),
            BlockState::Fresh => return Err(FreeError::Foreign),
        }
        kill(block);
        *state = BlockState::Quarantined;
        st.live -= 1;
        st.quarantine.push_back(addr);
        Ok(())
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats { live: st.live, quarantined: st.quarantine.len(), fresh: st.fresh.len(), mapped_bytes: st.mapped_bytes }
    }

    /// Maps more pages (growing by cffi's factor 1.3) and adds their blocks to `fresh`.
    fn grow(&self, st: &mut PoolState) -> bool {
        let pages = 1 + st.last_growth_pages * 13 / 10;
        let len = pages * self.config.page_size;
        let Some(base) = self.source.map(len) else { return false };
        st.last_growth_pages = pages;
        st.mapped_bytes += len;
        let count = len / self.config.block_size;
        let base = base.as_ptr() as usize;
        let at = st.mappings.partition_point(|m| m.base < base);
        st.mappings.insert(at, Mapping { base, states: vec![BlockState::Fresh; count] });
        // Reversed, so that `pop` hands out the lowest address first.
        st.fresh.extend((0..count).rev().map(|i| base + i * self.config.block_size));
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Heap pages; remembers every mapping, can be told to refuse.
    #[derive(Default)]
    struct HeapPages {
        maps: RefCell<Vec<Box<[u128]>>>,
        refuse: std::cell::Cell<bool>,
    }

    impl PageSource for &HeapPages {
        fn map(&self, len: usize) -> Option<NonNull<u8>> {
            if self.refuse.get() {
                return None;
            }
            let mut mem = vec![0u128; len / 16].into_boxed_slice();
            let ptr = NonNull::new(mem.as_mut_ptr().cast::<u8>());
            self.maps.borrow_mut().push(mem);
            ptr
        }
    }

    fn pool(pages: &HeapPages, quarantine: usize) -> ClosurePool<&HeapPages> {
        ClosurePool::new(pages, PoolConfig { block_size: 48, page_size: 4096, quarantine })
    }

    #[test]
    fn blocks_are_distinct_aligned_and_inside_the_pages() {
        let pages = HeapPages::default();
        let p = pool(&pages, 4);
        let blocks: Vec<_> = (0..300).map(|_| p.alloc().unwrap()).collect();
        let mut addrs: Vec<usize> = blocks.iter().map(|b| b.as_ptr() as usize).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 300);
        assert!(addrs.iter().all(|a| a % 8 == 0));
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= 64));
        // 48-byte blocks take 64: growth by 1, 2 and 3 pages (64, 128 and 192 blocks)
        // covers 300.
        assert_eq!(pages.maps.borrow().len(), 3);
        assert_eq!(p.stats(), PoolStats { live: 300, quarantined: 0, fresh: 64 + 128 + 192 - 300, mapped_bytes: 6 * 4096 });
    }

    #[test]
    fn a_freed_block_waits_for_quarantine_later_frees_and_goes_oldest_first() {
        let pages = HeapPages::default();
        let p = pool(&pages, 3);
        let first: Vec<_> = (0..64).map(|_| p.alloc().unwrap()).collect(); // the whole first page
        for b in &first[..4] {
            p.free(*b, |_| {}).unwrap();
        }
        // 4 wait, more than 3: the oldest (first[0]) comes back, then fresh blocks.
        assert_eq!(p.alloc(), Some(first[0]));
        let next = p.alloc().unwrap();
        assert!(!first.contains(&next), "3 waiting is not more than 3: a fresh block");
        p.free(first[4], |_| {}).unwrap();
        assert_eq!(p.alloc(), Some(first[1]));
    }

    #[test]
    fn kill_runs_before_the_block_can_be_reused() {
        let pages = HeapPages::default();
        let p = pool(&pages, 0);
        let b = p.alloc().unwrap();
        let mut killed = None;
        p.free(b, |blk| {
            // SAFETY: `blk` is a 64-byte block of `pages` (48 rounded up), owned by this free.
            unsafe { blk.as_ptr().write_bytes(0xDD, 64) };
            killed = Some(blk);
        })
        .unwrap();
        assert_eq!(killed, Some(b));
        let again = p.alloc().unwrap();
        assert_eq!(again, b, "quarantine 0: reused at once");
        // SAFETY: as above.
        assert_eq!(unsafe { *again.as_ptr() }, 0xDD);
    }

    #[test]
    fn double_and_foreign_frees_are_refused_without_running_kill() {
        let pages = HeapPages::default();
        let p = pool(&pages, 8);
        let b = p.alloc().unwrap();
        p.free(b, |_| {}).unwrap();
        assert_eq!(p.free(b, |_| panic!("kill on a double free")), Err(FreeError::DoubleFree));
        let mut local = 0u128;
        let foreign = NonNull::from(&mut local).cast::<u8>();
        assert_eq!(p.free(foreign, |_| panic!("kill on a foreign block")), Err(FreeError::Foreign));
        // SAFETY: one byte into the first block: inside our mapping, not a block start.
        let inside = unsafe { NonNull::new_unchecked(b.as_ptr().add(1)) };
        assert_eq!(p.free(inside, |_| panic!("kill inside a block")), Err(FreeError::Foreign));
        // SAFETY: the second block of the same page, never handed out.
        let never = unsafe { NonNull::new_unchecked(b.as_ptr().add(64)) };
        assert_eq!(p.free(never, |_| panic!("kill on a fresh block")), Err(FreeError::Foreign));
        assert_eq!(p.stats().quarantined, 1);
    }

    #[test]
    fn when_the_source_refuses_quarantined_blocks_are_reused_before_failing() {
        let pages = HeapPages::default();
        let p = pool(&pages, 1000);
        let all: Vec<_> = (0..64).map(|_| p.alloc().unwrap()).collect();
        pages.refuse.set(true);
        assert_eq!(p.alloc(), None);
        p.free(all[7], |_| {}).unwrap();
        assert_eq!(p.alloc(), Some(all[7]));
        assert_eq!(p.alloc(), None);
    }
}
