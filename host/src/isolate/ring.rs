//! Where a run's output lands in the host: slots of memory shared with the plugin server,
//! or buffers the host reads the socket into.
//!
//! The host makes a memfd of [`SLOTS`] slots of [`SLOT_SIZE`] bytes per server, maps it
//! read-only and hands it to the server, which maps it writable. A chunk of output the
//! server puts in a free slot crosses as a 21-byte frame naming the slot; the host lends the
//! slot to the log's reader as it is (no copy on the host's side, no socket copies at all)
//! and gives it back to the server when the reader drops the chunk, in batches. A chunk
//! too small to be worth a slot, too big for one, or sent while every slot is lent goes
//! through the socket as before, into a buffer from a small pool. The slots are an
//! accelerator: a server without them (no memfd, an old server) works the same, slower.
//!
//! Trust: the slots hold nothing but log bytes. The host checks every slot number and
//! length it is told and refuses a slot it already holds; a server that writes into a slot
//! the host holds (a bug: it only ever writes free slots) can change what the log says,
//! which it could anyway, and nothing else: no length, offset or pointer the host uses
//! comes from the shared memory.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::output::Lent;

/// Slots per server.
pub(crate) const SLOTS: u32 = 32;
/// The largest chunk a slot holds (a plugin's usual biggest chunk).
pub(crate) const SLOT_SIZE: usize = 256 * 1024;
/// Chunks below this go through the socket: copying them there costs less than a slot.
pub(crate) const MIN_SLOTTED: usize = 16 * 1024;
/// Every slot, as a bit set.
const ALL_FREE: u64 = u64::MAX >> (64 - SLOTS);
/// Slots the host gives back in one frame.
const RETURN_BATCH: usize = 4;
/// The ring's descriptor in the server.
pub(crate) const RING_FD: i32 = 5;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shared mapping of the ring's memfd.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who writes where is governed by slot ownership.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, writable: bool) -> std::io::Result<Self> {
        let len = SLOTS as usize * SLOT_SIZE;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a descriptor we hold; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Slot `slot`'s first byte (`slot` < [`SLOTS`], checked by the callers).
    fn slot(&self, slot: u32) -> *mut u8 {
        // SAFETY: slot < SLOTS, so the offset is inside the mapping.
        unsafe { self.ptr.add(slot as usize * SLOT_SIZE) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no slice of it outlives the mapping
        // (every lent chunk holds the ring, which holds the mapping).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Makes a ring's memfd, sized; `None` where the system has no memfd.
pub(crate) fn memfd() -> Option<OwnedFd> {
    // SAFETY: memfd_create with a valid C string; checked for failure.
    let fd = unsafe { libc::memfd_create(c"host-plugin-output".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = SLOTS as libc::off_t * SLOT_SIZE as libc::off_t;
    // SAFETY: ftruncate on our descriptor.
    (unsafe { libc::ftruncate(fd.as_raw_fd(), len) } == 0).then_some(fd)
}

/// The host's side of a ring: which slots the log's readers hold.
pub(crate) struct HostRing {
    map: Mapping,
    state: Mutex<HostSlots>,
    give_back: Box<dyn Fn(Vec<u32>) + Send + Sync>,
}

struct HostSlots {
    /// Bit `n` set: slot `n` is lent to a reader.
    held: u64,
    /// Slots readers are done with, not yet given back.
    returned: Vec<u32>,
}

impl HostRing {
    /// The ring on `fd`; `give_back` sends slots back to the server.
    pub(crate) fn new(
        fd: &OwnedFd,
        give_back: impl Fn(Vec<u32>) + Send + Sync + 'static,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            map: Mapping::new(fd, false)?,
            state: Mutex::new(HostSlots {
                held: 0,
                returned: Vec::new(),
            }),
            give_back: Box::new(give_back),
        }))
    }

    /// The `len` bytes the server put in `slot`, lent until dropped; an error for a slot
    /// that does not exist, a length that does not fit, or a slot already lent.
    pub(crate) fn lend(self: &Arc<Self>, slot: u32, len: u32) -> std::io::Result<Lent> {
        if slot >= SLOTS || len == 0 || len as usize > SLOT_SIZE {
            return Err(std::io::Error::other(format!(
                "output in slot {slot} of {len} bytes (slots 0 to {}, 1 to {SLOT_SIZE} bytes)",
                SLOTS - 1
            )));
        }
        let mut st = lock(&self.state);
        if st.held & (1 << slot) != 0 {
            return Err(std::io::Error::other(format!(
                "output in slot {slot}, which the host still holds"
            )));
        }
        st.held |= 1 << slot;
        Ok(Box::new(SlotChunk {
            ring: Arc::clone(self),
            slot,
            len: len as usize,
        }))
    }

    /// Gives back the slots returned so far (at the end of a run: none wait for a batch).
    pub(crate) fn flush(&self) {
        let returned = std::mem::take(&mut lock(&self.state).returned);
        if !returned.is_empty() {
            (self.give_back)(returned);
        }
    }

    fn release(&self, slot: u32) {
        let batch = {
            let mut st = lock(&self.state);
            st.held &= !(1 << slot);
            st.returned.push(slot);
            if st.returned.len() < RETURN_BATCH {
                return;
            }
            std::mem::take(&mut st.returned)
        };
        (self.give_back)(batch);
    }
}

/// A slot lent to a log's reader.
struct SlotChunk {
    ring: Arc<HostRing>,
    slot: u32,
    len: usize,
}

impl AsRef<[u8]> for SlotChunk {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot is inside the mapping, which lives as long as `ring`; the server
        // writes a slot only while the host has not lent it (see the module's note on
        // trust: a misbehaving server changes bytes, never lengths).
        unsafe { std::slice::from_raw_parts(self.ring.map.slot(self.slot), self.len) }
    }
}

impl Drop for SlotChunk {
    fn drop(&mut self) {
        self.ring.release(self.slot);
    }
}

/// The server's side of a ring: the free slots.
pub(crate) struct ServerRing {
    map: Mapping,
    /// Bit `n` set: slot `n` is free.
    free: Mutex<u64>,
}

impl ServerRing {
    /// The ring the host handed over on [`RING_FD`], if it did.
    pub(crate) fn open() -> Option<Self> {
        // SAFETY: fstat on a descriptor number; a closed one fails.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(RING_FD, &mut st) } != 0
            || st.st_size != SLOTS as libc::off_t * SLOT_SIZE as libc::off_t
        {
            return None;
        }
        // SAFETY: the host hands the server RING_FD; nothing else in it owns the descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(RING_FD) };
        let map = Mapping::new(&fd, true).ok()?;
        Some(Self {
            map,
            free: Mutex::new(ALL_FREE),
        })
    }

    /// Copies `bytes` into a free slot and returns it; `None` when `bytes` should go
    /// through the socket instead (too small, too big, or no slot free).
    pub(crate) fn put(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() < MIN_SLOTTED || bytes.len() > SLOT_SIZE {
            return None;
        }
        let slot = {
            let mut free = lock(&self.free);
            if *free == 0 {
                return None;
            }
            let slot = free.trailing_zeros();
            *free &= !(1 << slot);
            slot
        };
        // SAFETY: the slot is free: the host holds no part of it, and it fits the bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.slot(slot), bytes.len()) };
        Some(slot)
    }

    /// Slots the host gave back; numbers out of range are ignored.
    pub(crate) fn free(&self, slots: &[u32]) {
        let mut free = lock(&self.free);
        for &slot in slots.iter().filter(|&&s| s < SLOTS) {
            *free |= 1 << slot;
        }
    }
}

/// Buffers the host reads a server's socket output into, handed back when the log's
/// reader is done with them: a steady flow of log reuses a few warm buffers instead of
/// faulting in fresh pages for every chunk.
pub(crate) struct BufferPool {
    spare: Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max` idle buffers.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            spare: Mutex::new(Vec::new()),
            max,
        })
    }

    /// An empty buffer, with the capacity of an earlier chunk's when one is idle.
    pub(crate) fn take(&self) -> Vec<u8> {
        lock(&self.spare).pop().unwrap_or_default()
    }

    /// `buffer`, lent to a log's reader; it comes back here when dropped.
    pub(crate) fn lend(self: &Arc<Self>, buffer: Vec<u8>) -> Lent {
        Box::new(Pooled {
            pool: Arc::clone(self),
            buffer,
        })
    }
}

struct Pooled {
    pool: Arc<BufferPool>,
    buffer: Vec<u8>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let mut spare = lock(&self.pool.spare);
        if spare.len() < self.pool.max {
            spare.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cross_lend_and_come_back_and_bad_numbers_are_refused() {
        let fd = memfd().expect("memfd");
        let back = Arc::new(Mutex::new(Vec::new()));
        let host = {
            let back = Arc::clone(&back);
            HostRing::new(&fd, move |slots| lock(&back).extend(slots)).unwrap()
        };
        let server = ServerRing {
            map: Mapping::new(&fd, true).unwrap(),
            free: Mutex::new(ALL_FREE),
        };
        assert_eq!(server.put(&[1; 100]), None, "too small for a slot");
        assert_eq!(server.put(&vec![1; SLOT_SIZE + 1]), None, "too big for one");
        let mut lent = Vec::new();
        for n in 0..SLOTS {
            let bytes = vec![n as u8; MIN_SLOTTED + n as usize];
            let slot = server.put(&bytes).expect("a free slot");
            let chunk = host.lend(slot, bytes.len() as u32).unwrap();
            assert!((*chunk).as_ref() == bytes.as_slice(), "slot {slot}");
            assert!(host.lend(slot, 1).is_err(), "slot {slot} lent twice");
            lent.push(chunk);
        }
        assert_eq!(server.put(&[0; MIN_SLOTTED]), None, "every slot lent");
        assert!(host.lend(SLOTS, 1).is_err());
        assert!(host.lend(0, SLOT_SIZE as u32 + 1).is_err());
        drop(lent.drain(..3));
        assert!(lock(&back).is_empty(), "not a batch yet");
        host.flush();
        let given: Vec<u32> = std::mem::take(&mut *lock(&back));
        assert_eq!(given, [0, 1, 2]);
        server.free(&given);
        server.free(&[SLOTS + 7]);
        assert_eq!(server.put(&[9; MIN_SLOTTED]), Some(0));
        drop(lent);
        assert_eq!(
            lock(&back).len(),
            28,
            "the rest, in batches of {RETURN_BATCH}"
        );
    }
}
