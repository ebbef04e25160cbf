//! A store that refuses writes on demand, wrapping another: the way tests make the
//! audit log fail (a full disk, a broken database) to check that the service never
//! tells a client more than its store holds. Reads always go through.

use std::sync::atomic::{AtomicBool, Ordering};

use airlock_core::Error;

use super::{
    AuditStore, ExecutionEnd, ExecutionPage, ExecutionQuery, ExecutionRecord, ExecutionStart, IdempotencyKey,
    IdempotencyStore, KeyInfo, KeyStore, KeyUse, NewKey, Pruned, Retention, SandboxRecord, SandboxStart, SandboxStore,
};

/// A store whose writes fail while told to (see the module documentation).
#[derive(Debug, Default)]
pub struct FaultyStore<S> {
    inner: S,
    refuse_writes: AtomicBool,
    refuse_ends: AtomicBool,
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`; it takes writes until told otherwise.
    pub fn new(inner: S) -> Self {
        FaultyStore { inner, refuse_writes: AtomicBool::new(false), refuse_ends: AtomicBool::new(false) }
    }

    /// Refuses every write (as a full disk does) while `on`.
    pub fn refuse_writes(&self, on: bool) {
        self.refuse_writes.store(on, Ordering::SeqCst);
    }

    /// Refuses only the ends of executions (and probes) while `on`: a disk that filled
    /// while runs were in progress.
    pub fn refuse_ends(&self, on: bool) {
        self.refuse_ends.store(on, Ordering::SeqCst);
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn write(&self, ends: bool) -> Result<(), Error> {
        if self.refuse_writes.load(Ordering::SeqCst) || (ends && self.refuse_ends.load(Ordering::SeqCst)) {
            return Err(Error::host("audit store: database or disk is full (refused on purpose by FaultyStore)"));
        }
        Ok(())
    }
}

impl<S: AuditStore> AuditStore for FaultyStore<S> {
    fn begin(&self, start: &ExecutionStart) -> Result<(), Error> {
        self.write(false)?;
        self.inner.begin(start)
    }
    fn end(&self, id: &str, end: &ExecutionEnd) -> Result<(), Error> {
        self.write(true)?;
        self.inner.end(id, end)
    }
    fn execution(&self, id: &str, key_id: Option<&str>) -> Result<Option<ExecutionRecord>, Error> {
        self.inner.execution(id, key_id)
    }
    fn executions(&self, q: &ExecutionQuery) -> Result<ExecutionPage, Error> {
        self.inner.executions(q)
    }
    fn recover_lost(&self) -> Result<u64, Error> {
        self.write(false)?;
        self.inner.recover_lost()
    }
    fn probe(&self) -> Result<(), Error> {
        self.write(true)?;
        self.inner.probe()
    }
    fn prune(&self, retention: &Retention) -> Result<Pruned, Error> {
        self.write(false)?;
        self.inner.prune(retention)
    }
}

impl<S: KeyStore> KeyStore for FaultyStore<S> {
    fn create_key(&self, key: &NewKey) -> Result<(), Error> {
        self.write(false)?;
        self.inner.create_key(key)
    }
    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyInfo>, Error> {
        self.inner.key_by_hash(hash)
    }
    fn keys(&self) -> Result<Vec<KeyInfo>, Error> {
        self.inner.keys()
    }
    fn revoke_key(&self, id_or_name: &str) -> Result<bool, Error> {
        self.write(false)?;
        self.inner.revoke_key(id_or_name)
    }
}

impl<S: SandboxStore> SandboxStore for FaultyStore<S> {
    fn sandbox_created(&self, s: &SandboxStart, key: Option<&IdempotencyKey>) -> Result<(), Error> {
        self.write(false)?;
        self.inner.sandbox_created(s, key)
    }
    fn sandbox_ended(&self, id: &str, cause: &str, at_ms: u64) -> Result<(), Error> {
        self.write(false)?;
        self.inner.sandbox_ended(id, cause, at_ms)
    }
    fn sandbox(&self, id: &str, key_id: Option<&str>) -> Result<Option<SandboxRecord>, Error> {
        self.inner.sandbox(id, key_id)
    }
}

impl<S: IdempotencyStore> IdempotencyStore for FaultyStore<S> {
    fn begin_keyed(&self, start: &ExecutionStart, key: &IdempotencyKey) -> Result<KeyUse, Error> {
        self.write(false)?;
        self.inner.begin_keyed(start, key)
    }
    fn claim_sandbox_key(&self, key: &IdempotencyKey) -> Result<KeyUse, Error> {
        self.write(false)?;
        self.inner.claim_sandbox_key(key)
    }
    fn release_key(&self, key: &IdempotencyKey) -> Result<(), Error> {
        self.inner.release_key(key)
    }
}
