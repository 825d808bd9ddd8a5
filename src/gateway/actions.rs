//! Imperative actions: clients ask the gateway to do something in an external system (create a
//! Jira issue, send an email) through a registered [`ActionHandler`], exactly once.
//!
//! `POST /v1/sync/{gw}/action` carries an [`ActionPush`]; the [`ActionDispatcher`] answers with
//! one [`ActionResult`] per action, in order, inside an [`ActionResponse`]. The JSON shapes are
//! the original's (camelCase; HLCs as decimal strings).
//!
//! Semantics, per request:
//!
//! 1. **The whole request is validated first** ([`ActionPush::validate`]): non-empty `clientId`,
//!    `actionId`, `connector` and `actionType`, and every action's `clientId` equal to the
//!    push's. The first problem fails the request with [`Error::Invalid`] (HTTP 400) *before any
//!    action runs* — unlike the original, which executed and cached the actions preceding an
//!    invalid one. An authenticated caller must also be the push's client ([`Error::Forbidden`]).
//! 2. Then each action in order: a result cached for its `actionId` is returned as is; else a
//!    result cached for its `idempotencyKey` is returned (with this action's `actionId`); else an
//!    unknown connector or an action type the connector does not describe gives an
//!    `ACTION_NOT_SUPPORTED` error result (not retryable, cached); else the handler runs. A success
//!    is cached; an error result is cached only when it is not retryable, so a retry of a
//!    retryable failure runs the handler again.
//!
//! The idempotency cache is in memory, holds at most `max_entries` results by action id and as
//! many by idempotency key, each for `ttl` (defaults: 10 000 entries, 5 minutes, as the original).
//! Unlike the original, entries are scoped to the client: one client's idempotency key (or
//! action id) never returns another client's result. Concurrent requests carrying the same action
//! id or idempotency key are serialised, so a handler never runs twice for one key while its
//! first run is still in flight.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::{Principal, require_client};
use crate::kernel::HlcTimestamp;
use crate::{Error, Result};

/// The error code of an action whose connector or action type no handler supports.
pub const ACTION_NOT_SUPPORTED: &str = "ACTION_NOT_SUPPORTED";

/// Default bound on cached results (per index: by action id, by idempotency key).
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 10_000;

/// Default lifetime of a cached result.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);

/// HLCs as decimal strings in JSON (read from a decimal string or a non-negative integer).
mod hlc_decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::kernel::HlcTimestamp;

    pub fn serialize<S: Serializer>(hlc: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(hlc)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        HlcTimestamp::deserialize(d).map(|h| h.0)
    }
}

/// One imperative action a client asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// The action's unique id (the client derives it deterministically, so a retry reuses it).
    pub action_id: String,
    /// The client asking.
    pub client_id: String,
    /// The client's HLC when it created the action.
    #[serde(with = "hlc_decimal")]
    pub hlc: u64,
    /// The connector (handler) to run it, e.g. `jira`.
    pub connector: String,
    /// What to do, e.g. `create_issue`; one of the connector's [`ActionDescriptor`]s.
    pub action_type: String,
    /// The action's parameters.
    pub params: Map<String, Value>,
    /// A caller-chosen key: a second action with the same key (from the same client, within the
    /// cache's lifetime) gets the first one's result instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Action {
    /// The idempotency key, when present and non-empty (the original ignores an empty key).
    fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref().filter(|k| !k.is_empty())
    }
}

/// The body of `POST /v1/sync/{gw}/action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionPush {
    /// The client sending the actions.
    pub client_id: String,
    /// The actions, run in order.
    pub actions: Vec<Action>,
}

impl ActionPush {
    /// Reads a push from a JSON body, naming the first field that is missing or of the wrong type
    /// (e.g. `actions[3].params: must be an object`), then [`ActionPush::validate`]s it. `hlc` may
    /// be a decimal string (as the original sends it) or a non-negative integer; a null
    /// `idempotencyKey` is the same as none.
    pub fn from_json(body: &Value) -> Result<Self> {
        let Value::Object(body) = body else {
            return Err(invalid("body: must be a JSON object"));
        };
        let client_id = string_field(body, "clientId", "clientId")?;
        let Some(Value::Array(items)) = body.get("actions") else {
            return Err(invalid("actions: must be an array"));
        };
        let actions = items
            .iter()
            .enumerate()
            .map(|(i, item)| action_from_json(i, item))
            .collect::<Result<Vec<_>>>()?;
        let push = Self { client_id, actions };
        push.validate()?;
        Ok(push)
    }

    /// Checks what types cannot: non-empty `clientId`, and for every action non-empty
    /// `actionId`, `connector` and `actionType` and a `clientId` equal to the push's. Fails with
    /// [`Error::Invalid`] naming the first problem.
    pub fn validate(&self) -> Result<()> {
        if self.client_id.is_empty() {
            return Err(invalid("clientId: must be a non-empty string"));
        }
        for (i, action) in self.actions.iter().enumerate() {
            for (field, value) in [
                ("actionId", &action.action_id),
                ("clientId", &action.client_id),
                ("connector", &action.connector),
                ("actionType", &action.action_type),
            ] {
                if value.is_empty() {
                    return Err(invalid(format!(
                        "actions[{i}].{field}: must be a non-empty string"
                    )));
                }
            }
            if action.client_id != self.client_id {
                return Err(invalid(format!(
                    "actions[{i}].clientId: {:?} does not match the push's clientId {:?}",
                    action.client_id, self.client_id
                )));
            }
        }
        Ok(())
    }
}

fn action_from_json(i: usize, item: &Value) -> Result<Action> {
    let Value::Object(object) = item else {
        return Err(invalid(format!("actions[{i}]: must be an object")));
    };
    let at = |field: &str| format!("actions[{i}].{field}");
    let action_id = string_field(object, "actionId", &at("actionId"))?;
    let client_id = string_field(object, "clientId", &at("clientId"))?;
    let hlc = match object.get("hlc") {
        Some(Value::String(text)) => text.parse::<HlcTimestamp>().map(|h| h.0).ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(format!(
            "{}: must be a decimal string or a non-negative integer that fits in 64 bits",
            at("hlc")
        ))
    })?;
    let connector = string_field(object, "connector", &at("connector"))?;
    let action_type = string_field(object, "actionType", &at("actionType"))?;
    let Some(Value::Object(params)) = object.get("params") else {
        return Err(invalid(format!("{}: must be an object", at("params"))));
    };
    let idempotency_key = match object.get("idempotencyKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "{}: must be a string when present",
                at("idempotencyKey")
            )));
        }
    };
    Ok(Action {
        action_id,
        client_id,
        hlc,
        connector,
        action_type,
        params: params.clone(),
        idempotency_key,
    })
}

/// The string `field` of `object`, non-empty; `path` names it in the error.
fn string_field(object: &Map<String, Value>, field: &str, path: &str) -> Result<String> {
    match object.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(invalid(format!("{path}: must be a non-empty string"))),
    }
}

fn invalid(message: impl fmt::Display) -> Error {
    Error::invalid("action", message)
}

/// A successful action's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionSuccess {
    /// The action this answers.
    pub action_id: String,
    /// What the handler returned.
    pub data: Value,
    /// The server HLC of the request that ran the action (a cached replay keeps the original).
    #[serde(with = "hlc_decimal")]
    pub server_hlc: u64,
}

/// A failed action's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionErrorResult {
    /// The action this answers.
    pub action_id: String,
    /// A machine-readable code, e.g. [`ACTION_NOT_SUPPORTED`] or the handler's own.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Whether sending the same action again may succeed.
    pub retryable: bool,
}

/// The result of one action: `{"actionId","data","serverHlc"}` or
/// `{"actionId","code","message","retryable"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionResult {
    /// The action ran and succeeded.
    Success(ActionSuccess),
    /// The action was not run or failed.
    Error(ActionErrorResult),
}

impl ActionResult {
    /// The action this result answers.
    pub fn action_id(&self) -> &str {
        match self {
            Self::Success(s) => &s.action_id,
            Self::Error(e) => &e.action_id,
        }
    }

    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success(_))
    }

    /// This result answering `action_id` instead.
    fn for_action(mut self, action_id: &str) -> Self {
        let id = match &mut self {
            Self::Success(s) => &mut s.action_id,
            Self::Error(e) => &mut e.action_id,
        };
        if id != action_id {
            *id = action_id.to_string();
        }
        self
    }
}

/// The response to an [`ActionPush`]: one result per action, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResponse {
    /// The results, in the order of the actions.
    pub results: Vec<ActionResult>,
    /// The server HLC of this response.
    #[serde(with = "hlc_decimal")]
    pub server_hlc: u64,
}

/// One action a connector supports, for discovery (`GET /v1/sync/{gw}/actions`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionDescriptor {
    /// The `actionType` that selects it.
    pub action_type: String,
    /// What it does, for people.
    pub description: String,
    /// A JSON Schema for its `params`, if the connector publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_schema: Option<Value>,
}

/// The body of `GET /v1/sync/{gw}/actions`: `{"connectors": {name: [ActionDescriptor]}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionDiscovery {
    /// Each registered connector's actions, by connector name.
    pub connectors: BTreeMap<String, Vec<ActionDescriptor>>,
}

/// Why a handler could not do an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionFailure {
    /// A machine-readable code, e.g. `JIRA_API_ERROR`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Whether trying the same action again may succeed (a timeout, a 503); a retryable failure
    /// is not cached.
    pub retryable: bool,
}

impl ActionFailure {
    /// A failure with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }
}

impl fmt::Display for ActionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ActionFailure {}

/// Runs the actions of one connector.
#[async_trait]
pub trait ActionHandler: Send + Sync {
    /// The connector name actions address it by (`Action::connector`).
    fn connector(&self) -> &str;

    /// The actions it supports; an action whose type is not listed is not run.
    fn describe(&self) -> Vec<ActionDescriptor>;

    /// Runs `action` for `caller`, returning the result data.
    async fn execute(
        &self,
        action: &Action,
        caller: &Principal,
    ) -> std::result::Result<Value, ActionFailure>;
}

/// Routes actions to handlers by connector, with an idempotency cache (see the module docs).
pub struct ActionDispatcher {
    handlers: RwLock<BTreeMap<String, Arc<dyn ActionHandler>>>,
    cache: Mutex<IdempotencyCache>,
    in_flight: KeyLocks,
}

impl fmt::Debug for ActionDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionDispatcher")
            .field("connectors", &self.connectors())
            .finish_non_exhaustive()
    }
}

impl Default for ActionDispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl ActionDispatcher {
    /// A dispatcher with no handlers and the default cache bounds
    /// ([`DEFAULT_CACHE_MAX_ENTRIES`], [`DEFAULT_CACHE_TTL`]).
    pub fn new() -> Self {
        Self::with_cache(DEFAULT_CACHE_MAX_ENTRIES, DEFAULT_CACHE_TTL)
    }

    /// A dispatcher whose cache holds at most `max_entries` results per index for `ttl` each.
    pub fn with_cache(max_entries: usize, ttl: Duration) -> Self {
        Self {
            handlers: RwLock::new(BTreeMap::new()),
            cache: Mutex::new(IdempotencyCache::new(max_entries, ttl)),
            in_flight: KeyLocks::default(),
        }
    }

    /// Registers `handler` under its [`ActionHandler::connector`] name, replacing any handler of
    /// that name.
    pub fn register(&self, handler: Arc<dyn ActionHandler>) {
        let name = handler.connector().to_string();
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, handler);
    }

    /// Removes the handler of `connector`; whether there was one.
    pub fn unregister(&self, connector: &str) -> bool {
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(connector)
            .is_some()
    }

    /// The registered connector names, sorted.
    pub fn connectors(&self) -> Vec<String> {
        self.read_handlers().keys().cloned().collect()
    }

    /// Each registered connector's actions, by connector name.
    pub fn describe(&self) -> BTreeMap<String, Vec<ActionDescriptor>> {
        self.read_handlers()
            .iter()
            .map(|(name, handler)| (name.clone(), handler.describe()))
            .collect()
    }

    /// Validates `push` as a whole, then runs its actions in order for `caller` (see the module
    /// docs), stamping new results and the response with `server_hlc`.
    ///
    /// Fails — before running anything — with [`Error::Invalid`] for an invalid push, or
    /// [`Error::Forbidden`] when an authenticated caller is not the push's client. Action
    /// failures are results, not errors.
    pub async fn dispatch(
        &self,
        push: ActionPush,
        caller: &Principal,
        server_hlc: u64,
    ) -> Result<ActionResponse> {
        push.validate()?;
        require_client(caller, &push.client_id)?;
        let mut results = Vec::with_capacity(push.actions.len());
        for action in &push.actions {
            results.push(self.dispatch_one(action, caller, server_hlc).await);
        }
        Ok(ActionResponse {
            results,
            server_hlc,
        })
    }

    async fn dispatch_one(
        &self,
        action: &Action,
        caller: &Principal,
        server_hlc: u64,
    ) -> ActionResult {
        let by_id = (action.client_id.clone(), action.action_id.clone());
        let by_key = action
            .idempotency_key()
            .map(|key| (action.client_id.clone(), key.to_string()));
        // Id before key, always: a fixed order cannot deadlock.
        let _id_guard = self.in_flight.lock(LockKey::Action(by_id.clone())).await;
        let _key_guard = match &by_key {
            Some(k) => Some(self.in_flight.lock(LockKey::Idempotency(k.clone())).await),
            None => None,
        };

        let now = Instant::now();
        {
            let cache = self.lock_cache();
            if let Some(hit) = cache.by_action.get(&by_id, now) {
                return hit.clone();
            }
            if let Some(hit) = by_key.as_ref().and_then(|k| cache.by_key.get(k, now)) {
                return hit.clone().for_action(&action.action_id);
            }
        }

        let (result, cacheable) = self.run(action, caller, server_hlc).await;
        if cacheable {
            let now = Instant::now();
            let mut cache = self.lock_cache();
            cache.by_action.insert(by_id, result.clone(), now);
            if let Some(k) = by_key {
                cache.by_key.insert(k, result.clone(), now);
            }
        }
        result
    }

    /// Resolves and runs the handler; whether the result may be cached.
    async fn run(
        &self,
        action: &Action,
        caller: &Principal,
        server_hlc: u64,
    ) -> (ActionResult, bool) {
        let handler = self.read_handlers().get(&action.connector).cloned();
        let not_supported = |message: String| {
            let result = ActionResult::Error(ActionErrorResult {
                action_id: action.action_id.clone(),
                code: ACTION_NOT_SUPPORTED.to_string(),
                message,
                retryable: false,
            });
            (result, true)
        };
        let Some(handler) = handler else {
            return not_supported(format!(
                "No action handler registered for connector {:?}",
                action.connector
            ));
        };
        if !handler
            .describe()
            .iter()
            .any(|d| d.action_type == action.action_type)
        {
            return not_supported(format!(
                "Action type {:?} not supported by connector {:?}",
                action.action_type, action.connector
            ));
        }
        tracing::debug!(
            action_id = %action.action_id,
            connector = %action.connector,
            action_type = %action.action_type,
            "executing action"
        );
        match handler.execute(action, caller).await {
            Ok(data) => (
                ActionResult::Success(ActionSuccess {
                    action_id: action.action_id.clone(),
                    data,
                    server_hlc,
                }),
                true,
            ),
            Err(failure) => {
                tracing::debug!(
                    action_id = %action.action_id,
                    code = %failure.code,
                    retryable = failure.retryable,
                    "action failed"
                );
                let cacheable = !failure.retryable;
                let result = ActionResult::Error(ActionErrorResult {
                    action_id: action.action_id.clone(),
                    code: failure.code,
                    message: failure.message,
                    retryable: failure.retryable,
                });
                (result, cacheable)
            }
        }
    }

    fn read_handlers(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn ActionHandler>>> {
        self.handlers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_cache(&self) -> MutexGuard<'_, IdempotencyCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency cache
// ---------------------------------------------------------------------------------------------

/// `(client id, action id or idempotency key)`.
type ClientScoped = (String, String);

/// Cached results by action id and by idempotency key.
#[derive(Debug)]
struct IdempotencyCache {
    by_action: TtlMap<ClientScoped, ActionResult>,
    by_key: TtlMap<ClientScoped, ActionResult>,
}

impl IdempotencyCache {
    fn new(max_entries: usize, ttl: Duration) -> Self {
        Self {
            by_action: TtlMap::new(max_entries, ttl),
            by_key: TtlMap::new(max_entries, ttl),
        }
    }
}

/// A map whose entries live for `ttl`, holding at most `max_entries` (the oldest go first).
/// Insertion order is expiry order, so both bounds are enforced from the front of one queue.
#[derive(Debug)]
struct TtlMap<K, V> {
    max_entries: usize,
    ttl: Duration,
    entries: HashMap<K, (Instant, V)>,
    /// Insertion times and keys, oldest first; a record whose time no longer matches its
    /// entry's (the key was inserted again) is stale and skipped.
    order: VecDeque<(Instant, K)>,
}

impl<K: Clone + Eq + Hash, V> TtlMap<K, V> {
    fn new(max_entries: usize, ttl: Duration) -> Self {
        Self {
            max_entries,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The value of `key` unless it has expired by `now`.
    fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) <= self.ttl)
            .map(|(_, v)| v)
    }

    /// Sets `key` to `value` at `now`, first dropping expired entries, then the oldest beyond
    /// `max_entries`.
    fn insert(&mut self, key: K, value: V, now: Instant) {
        self.entries.insert(key.clone(), (now, value));
        self.order.push_back((now, key));
        while let Some((at, _)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) > self.ttl;
            if !expired && self.entries.len() <= self.max_entries {
                break;
            }
            if let Some((at, key)) = self.order.pop_front()
                && self.entries.get(&key).is_some_and(|(t, _)| *t == at)
            {
                self.entries.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

// ---------------------------------------------------------------------------------------------
// In-flight serialisation
// ---------------------------------------------------------------------------------------------

/// What an in-flight lock is held for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LockKey {
    Action(ClientScoped),
    Idempotency(ClientScoped),
}

/// One async mutex per key in use, created on demand and dropped when no one holds or awaits it.
#[derive(Debug, Default)]
struct KeyLocks {
    locks: Mutex<HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a key's lock; releases it (and forgets the key when unused) on drop.
struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: LockKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    async fn lock(&self, key: LockKey) -> KeyGuard<'_> {
        let mutex = self
            .map()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        // Built before awaiting so that a cancelled wait still cleans up the map entry.
        let mut held = KeyGuard {
            owner: self,
            key,
            guard: None,
        };
        held.guard = Some(mutex.lock_owned().await);
        held
    }

    fn map(&self) -> MutexGuard<'_, HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.owner.map();
        // Only the map's own reference left: nobody holds or awaits this key.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::gateway::auth::{Authenticator, Role};
    use crate::kernel::rules::Claims;

    /// A connector `test` with action types `ok`, `fail` (permanent), `flaky` (retryable) and
    /// `slow`, counting executions.
    #[derive(Default)]
    struct TestHandler {
        executions: AtomicUsize,
    }

    impl TestHandler {
        fn count(&self) -> usize {
            self.executions.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl ActionHandler for TestHandler {
        fn connector(&self) -> &str {
            "test"
        }

        fn describe(&self) -> Vec<ActionDescriptor> {
            ["ok", "fail", "flaky", "slow"]
                .into_iter()
                .map(|t| ActionDescriptor {
                    action_type: t.to_string(),
                    description: format!("{t} action"),
                    params_schema: None,
                })
                .collect()
        }

        async fn execute(
            &self,
            action: &Action,
            caller: &Principal,
        ) -> std::result::Result<Value, ActionFailure> {
            let n = self.executions.fetch_add(1, Ordering::SeqCst) + 1;
            match action.action_type.as_str() {
                "ok" => Ok(json!({"run": n, "params": action.params, "caller": caller.client_id})),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(json!({"run": n}))
                }
                "fail" => Err(ActionFailure::new("BAD_INPUT", "no such project", false)),
                _ => Err(ActionFailure::new("UPSTREAM_DOWN", "try later", true)),
            }
        }
    }

    fn setup() -> (ActionDispatcher, Arc<TestHandler>) {
        let dispatcher = ActionDispatcher::new();
        let handler = Arc::new(TestHandler::default());
        dispatcher.register(handler.clone());
        (dispatcher, handler)
    }

    fn action(id: &str, action_type: &str) -> Action {
        Action {
            action_id: id.to_string(),
            client_id: "client-a".to_string(),
            hlc: 42,
            connector: "test".to_string(),
            action_type: action_type.to_string(),
            params: Map::new(),
            idempotency_key: None,
        }
    }

    fn push(actions: Vec<Action>) -> ActionPush {
        ActionPush {
            client_id: "client-a".to_string(),
            actions,
        }
    }

    fn anon() -> Principal {
        Authenticator::new("gw", vec![]).anonymous("client-a")
    }

    fn data(result: &ActionResult) -> &Value {
        match result {
            ActionResult::Success(s) => &s.data,
            ActionResult::Error(e) => panic!("expected success, got {e:?}"),
        }
    }

    fn error(result: &ActionResult) -> &ActionErrorResult {
        match result {
            ActionResult::Error(e) => e,
            ActionResult::Success(s) => panic!("expected error, got {s:?}"),
        }
    }

    #[tokio::test]
    async fn success_result_and_response_json() {
        let (d, h) = setup();
        let mut a = action("a1", "ok");
        a.params.insert("title".into(), json!("Fix it"));
        let response = d.dispatch(push(vec![a]), &anon(), 99).await.unwrap();
        assert_eq!(h.count(), 1);
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({
                "results": [{
                    "actionId": "a1",
                    "data": {"run": 1, "params": {"title": "Fix it"}, "caller": "client-a"},
                    "serverHlc": "99"
                }],
                "serverHlc": "99"
            })
        );
        // And it reads back.
        let back: ActionResponse =
            serde_json::from_value(serde_json::to_value(&response).unwrap()).unwrap();
        assert_eq!(back, response);
    }

    #[tokio::test]
    async fn replay_by_action_id_returns_cached_result() {
        let (d, h) = setup();
        let first = d
            .dispatch(push(vec![action("a1", "ok")]), &anon(), 1)
            .await
            .unwrap();
        let again = d
            .dispatch(push(vec![action("a1", "ok")]), &anon(), 2)
            .await
            .unwrap();
        assert_eq!(h.count(), 1);
        assert_eq!(again.results, first.results);
        assert_eq!(again.server_hlc, 2);
        // The same action twice in one request also runs once.
        let both = d
            .dispatch(
                push(vec![action("a2", "ok"), action("a2", "ok")]),
                &anon(),
                3,
            )
            .await
            .unwrap();
        assert_eq!(h.count(), 2);
        assert_eq!(both.results[0], both.results[1]);
    }

    #[tokio::test]
    async fn replay_by_idempotency_key_returns_cached_result() {
        let (d, h) = setup();
        let mut a = action("a1", "ok");
        a.idempotency_key = Some("create-PROJ-1".into());
        let mut b = action("b1", "ok");
        b.idempotency_key = Some("create-PROJ-1".into());
        let first = d.dispatch(push(vec![a]), &anon(), 1).await.unwrap();
        let second = d.dispatch(push(vec![b]), &anon(), 2).await.unwrap();
        assert_eq!(h.count(), 1);
        assert_eq!(second.results[0].action_id(), "b1");
        assert_eq!(data(&second.results[0]), data(&first.results[0]));
        // An empty key is no key.
        let mut c = action("c1", "ok");
        c.idempotency_key = Some(String::new());
        let mut e = action("e1", "ok");
        e.idempotency_key = Some(String::new());
        d.dispatch(push(vec![c, e]), &anon(), 3).await.unwrap();
        assert_eq!(h.count(), 3);
    }

    #[tokio::test]
    async fn cache_is_scoped_to_the_client() {
        let (d, h) = setup();
        let mut a = action("a1", "ok");
        a.idempotency_key = Some("k".into());
        d.dispatch(push(vec![a.clone()]), &anon(), 1).await.unwrap();
        let mut other = a;
        other.client_id = "client-b".into();
        let other_push = ActionPush {
            client_id: "client-b".into(),
            actions: vec![other],
        };
        let caller = Authenticator::new("gw", vec![]).anonymous("client-b");
        let r = d.dispatch(other_push, &caller, 2).await.unwrap();
        assert_eq!(h.count(), 2);
        assert_eq!(data(&r.results[0])["caller"], "client-b");
    }

    #[tokio::test]
    async fn retryable_errors_are_not_cached() {
        let (d, h) = setup();
        let r = d
            .dispatch(push(vec![action("f1", "flaky")]), &anon(), 1)
            .await
            .unwrap();
        let e = error(&r.results[0]);
        assert_eq!((e.code.as_str(), e.retryable), ("UPSTREAM_DOWN", true));
        d.dispatch(push(vec![action("f1", "flaky")]), &anon(), 2)
            .await
            .unwrap();
        assert_eq!(h.count(), 2);
    }

    #[tokio::test]
    async fn permanent_errors_are_cached() {
        let (d, h) = setup();
        let r = d
            .dispatch(push(vec![action("x1", "fail")]), &anon(), 1)
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&r.results[0]).unwrap(),
            json!({"actionId": "x1", "code": "BAD_INPUT", "message": "no such project", "retryable": false})
        );
        let again = d
            .dispatch(push(vec![action("x1", "fail")]), &anon(), 2)
            .await
            .unwrap();
        assert_eq!(h.count(), 1);
        assert_eq!(again.results, r.results);
    }

    #[tokio::test]
    async fn unknown_connector_and_action_type() {
        let (d, h) = setup();
        let mut a = action("u1", "ok");
        a.connector = "jira".into();
        let b = action("u2", "delete_everything");
        let r = d
            .dispatch(push(vec![a.clone(), b]), &anon(), 1)
            .await
            .unwrap();
        let e = error(&r.results[0]);
        assert_eq!(e.code, ACTION_NOT_SUPPORTED);
        assert!(!e.retryable);
        assert_eq!(
            e.message,
            "No action handler registered for connector \"jira\""
        );
        let e = error(&r.results[1]);
        assert_eq!(e.code, ACTION_NOT_SUPPORTED);
        assert_eq!(
            e.message,
            "Action type \"delete_everything\" not supported by connector \"test\""
        );
        assert_eq!(h.count(), 0);
        // Cached, as in the original: registering the connector later does not change the answer
        // for the same action id.
        struct Jira;
        #[async_trait]
        impl ActionHandler for Jira {
            fn connector(&self) -> &str {
                "jira"
            }
            fn describe(&self) -> Vec<ActionDescriptor> {
                vec![ActionDescriptor {
                    action_type: "ok".into(),
                    description: String::new(),
                    params_schema: None,
                }]
            }
            async fn execute(
                &self,
                _: &Action,
                _: &Principal,
            ) -> std::result::Result<Value, ActionFailure> {
                Ok(Value::Null)
            }
        }
        d.register(Arc::new(Jira));
        let again = d.dispatch(push(vec![a]), &anon(), 2).await.unwrap();
        assert_eq!(error(&again.results[0]).code, ACTION_NOT_SUPPORTED);
    }

    #[tokio::test]
    async fn invalid_request_is_rejected_before_any_action_runs() {
        let (d, h) = setup();
        let mut bad = action("a3", "ok");
        bad.connector = String::new();
        let err = d
            .dispatch(
                push(vec![action("a1", "ok"), action("a2", "ok"), bad]),
                &anon(),
                1,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "VALIDATION_ERROR");
        assert_eq!(
            err.to_string(),
            "invalid action: actions[2].connector: must be a non-empty string"
        );
        assert_eq!(h.count(), 0);
        // Nothing was cached either: the valid actions run when sent alone.
        d.dispatch(push(vec![action("a1", "ok")]), &anon(), 2)
            .await
            .unwrap();
        assert_eq!(h.count(), 1);
    }

    #[tokio::test]
    async fn action_client_must_match_push_client() {
        let (d, h) = setup();
        let mut other = action("a1", "ok");
        other.client_id = "client-b".into();
        let err = d.dispatch(push(vec![other]), &anon(), 1).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("actions[0].clientId: \"client-b\" does not match"),
            "{err}"
        );
        assert_eq!(h.count(), 0);
    }

    #[tokio::test]
    async fn authenticated_caller_must_be_the_push_client() {
        let (d, h) = setup();
        let caller = Principal {
            client_id: "client-b".into(),
            gateway_id: "gw".into(),
            role: Role::Client,
            claims: Claims::new(),
            authenticated: true,
        };
        let err = d
            .dispatch(push(vec![action("a1", "ok")]), &caller, 1)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Forbidden(_)));
        assert_eq!(h.count(), 0);
    }

    #[tokio::test]
    async fn concurrent_duplicates_run_once() {
        let (d, h) = setup();
        let caller = anon();
        let (r1, r2) = tokio::join!(
            d.dispatch(push(vec![action("s1", "slow")]), &caller, 1),
            d.dispatch(push(vec![action("s1", "slow")]), &caller, 2),
        );
        assert_eq!(h.count(), 1);
        assert_eq!(r1.unwrap().results, r2.unwrap().results);
        assert!(d.in_flight.map().is_empty());
    }

    #[test]
    fn dispatch_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let d = ActionDispatcher::new();
        let caller = anon();
        let fut = d.dispatch(push(vec![]), &caller, 0);
        assert_send(&fut);
    }

    #[test]
    fn describe_lists_connectors() {
        let (d, _) = setup();
        let described = d.describe();
        assert_eq!(described.keys().collect::<Vec<_>>(), ["test"]);
        assert_eq!(described["test"].len(), 4);
        let body = serde_json::to_value(ActionDiscovery {
            connectors: described,
        })
        .unwrap();
        assert_eq!(
            body["connectors"]["test"][0],
            json!({"actionType": "ok", "description": "ok action"})
        );
        assert!(d.unregister("test"));
        assert!(!d.unregister("test"));
        assert!(d.describe().is_empty());
    }

    #[test]
    fn push_from_json() {
        let body = json!({
            "clientId": "client-a",
            "actions": [
                {"actionId": "a1", "clientId": "client-a", "hlc": "18446744073709551615",
                 "connector": "test", "actionType": "ok", "params": {"x": 1}},
                {"actionId": "a2", "clientId": "client-a", "hlc": 7,
                 "connector": "test", "actionType": "ok", "params": {}, "idempotencyKey": "k"},
                {"actionId": "a3", "clientId": "client-a", "hlc": "0",
                 "connector": "test", "actionType": "ok", "params": {}, "idempotencyKey": null}
            ]
        });
        let p = ActionPush::from_json(&body).unwrap();
        assert_eq!(p.actions[0].hlc, u64::MAX);
        assert_eq!(p.actions[0].params["x"], 1);
        assert_eq!(p.actions[1].hlc, 7);
        assert_eq!(p.actions[1].idempotency_key.as_deref(), Some("k"));
        assert_eq!(p.actions[2].idempotency_key, None);
        // serde reads the same shape, and writes hlc back as a string.
        let via_serde: ActionPush = serde_json::from_value(body).unwrap();
        assert_eq!(via_serde, p);
        assert_eq!(serde_json::to_value(&p).unwrap()["actions"][1]["hlc"], "7");
    }

    #[test]
    fn push_from_json_names_the_bad_field() {
        let good = json!({"actionId": "a1", "clientId": "c", "hlc": "1",
                          "connector": "test", "actionType": "ok", "params": {}});
        let with = |field: &str, value: Value| {
            let mut a = good.clone();
            match value {
                Value::Null if field != "idempotencyKey" => {
                    a.as_object_mut().unwrap().remove(field);
                }
                v => {
                    a[field] = v;
                }
            }
            json!({"clientId": "c", "actions": [good.clone(), a]})
        };
        let cases = [
            (json!([]), "body: must be a JSON object"),
            (
                json!({"actions": []}),
                "clientId: must be a non-empty string",
            ),
            (json!({"clientId": "c"}), "actions: must be an array"),
            (
                json!({"clientId": "c", "actions": [1]}),
                "actions[0]: must be an object",
            ),
            (
                with("actionId", Value::Null),
                "actions[1].actionId: must be a non-empty string",
            ),
            (
                with("connector", json!(5)),
                "actions[1].connector: must be a non-empty string",
            ),
            (
                with("actionType", json!("")),
                "actions[1].actionType: must be a non-empty string",
            ),
            (
                with("params", json!([1])),
                "actions[1].params: must be an object",
            ),
            (
                with("params", Value::Null),
                "actions[1].params: must be an object",
            ),
            (
                with("hlc", json!("12x")),
                "actions[1].hlc: must be a decimal string",
            ),
            (
                with("hlc", json!(-1)),
                "actions[1].hlc: must be a decimal string",
            ),
            (
                with("hlc", json!(1.5)),
                "actions[1].hlc: must be a decimal string",
            ),
            (
                with("hlc", json!("18446744073709551616")),
                "actions[1].hlc: must be a decimal string",
            ),
            (
                with("idempotencyKey", json!(3)),
                "actions[1].idempotencyKey: must be a string",
            ),
            (
                with("clientId", json!("d")),
                "actions[1].clientId: \"d\" does not match",
            ),
        ];
        for (body, expected) in cases {
            let err = ActionPush::from_json(&body).unwrap_err();
            assert_eq!(err.code(), "VALIDATION_ERROR");
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid action: {expected}")),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn ttl_map_expires_and_bounds() {
        let t0 = Instant::now();
        let mut m: TtlMap<u32, &str> = TtlMap::new(3, Duration::from_secs(300));
        m.insert(1, "a", t0);
        assert_eq!(m.get(&1, t0 + Duration::from_secs(300)), Some(&"a"));
        assert_eq!(m.get(&1, t0 + Duration::from_secs(301)), None);
        for k in 2..=4 {
            m.insert(k, "b", t0 + Duration::from_secs(k.into()));
        }
        // Max 3: the oldest (1) went.
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&1, t0), None);
        // Re-inserting a key refreshes it; its stale queue record does not evict the new entry.
        m.insert(2, "c", t0 + Duration::from_secs(10));
        assert_eq!(m.len(), 3);
        m.insert(5, "d", t0 + Duration::from_secs(11));
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&2, t0 + Duration::from_secs(11)), Some(&"c"));
        assert_eq!(m.get(&3, t0 + Duration::from_secs(11)), None);
        // Everything expired is dropped on the next insert.
        m.insert(6, "e", t0 + Duration::from_secs(1000));
        assert_eq!(m.len(), 1);
    }
}
