//! Imperative actions through the gateway's connectors: [`SyncEngine::execute`] and
//! [`SyncEngine::discover`].
//!
//! An action is `{connector, actionType, params}`, sent as the original protocol's
//! `ActionPush` (DoAction `actions`). Its `actionId` is the kernel's deterministic hash of the
//! client, an HLC from the replica's clock and the action, so the same [`PreparedAction`]
//! re-sent after a lost answer is recognised by the gateway; an `idempotency_key` makes two
//! *separately prepared* actions count as one (the gateway answers the second with the first's
//! result). Actions are not queued offline: they need the gateway, and fail when it cannot be
//! reached (a retryable error — send the same prepared action again).

use serde_json::{Map, Value};

use crate::gateway::actions::{Action, ActionPush, ActionResponse, ActionResult};
use crate::kernel::delta::action_id;
use crate::{Error, Result};

use super::engine::SyncEngine;

/// An action ready to send, with its id fixed.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedAction(pub Action);

impl SyncEngine {
    /// Prepares an action: fixes its HLC and id.
    pub fn prepare_action(
        &self,
        connector: &str,
        action_type: &str,
        params: Map<String, Value>,
        idempotency_key: Option<&str>,
    ) -> PreparedAction {
        let store = self.store();
        let hlc = store.now();
        let id = action_id(
            store.client_id(),
            hlc,
            connector,
            action_type,
            &Value::Object(params.clone()),
        );
        PreparedAction(Action {
            action_id: id,
            client_id: store.client_id().to_string(),
            hlc: hlc.0,
            connector: connector.to_string(),
            action_type: action_type.to_string(),
            params,
            idempotency_key: idempotency_key.map(str::to_string),
        })
    }

    /// Sends a prepared action; its result (a success or the connector's error).
    pub async fn send_action(&self, action: &PreparedAction) -> Result<ActionResult> {
        let push = ActionPush {
            client_id: self.store().client_id().to_string(),
            actions: vec![action.0.clone()],
        };
        let body = serde_json::to_vec(&push)
            .map_err(|e| Error::internal(format!("serialising an action: {e}")))?;
        let answer = self.connection().action("actions", body).await;
        self.record(&answer);
        let response: ActionResponse =
            serde_json::from_value(answer?).map_err(|e| Error::External {
                system: "gateway",
                message: format!("an action response does not parse: {e}"),
                retryable: false,
                source: None,
            })?;
        response
            .results
            .into_iter()
            .next()
            .ok_or_else(|| Error::External {
                system: "gateway",
                message: "an action response has no result".to_string(),
                retryable: false,
                source: None,
            })
    }

    /// Prepares and sends an action in one go.
    pub async fn execute(
        &self,
        connector: &str,
        action_type: &str,
        params: Map<String, Value>,
        idempotency_key: Option<&str>,
    ) -> Result<ActionResult> {
        let action = self.prepare_action(connector, action_type, params, idempotency_key);
        self.send_action(&action).await
    }

    /// The connectors' actions on offer: `{"connectors": {name: [{actionType, description,
    /// ...}]}}`.
    pub async fn discover(&self) -> Result<Value> {
        let answer = self
            .connection()
            .action("describe-actions", Vec::new())
            .await;
        self.record(&answer);
        answer
    }
}
