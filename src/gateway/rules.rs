//! The questions the gateway asks of the actors, in one place. Every answer comes from the
//! actors' own rules: the registry's governed view (read without a mailbox hop on the hot
//! path), the publisher's view of which topics it publishes directly, the approval actor for
//! requests, and the publisher for held records.

use actix::Addr;
use futures_util::future::BoxFuture;

use crate::actors::access::may_use_group;
use crate::actors::approval::{Approval, RequestDeletion, RequestTopic};
use crate::actors::publisher::{DirectTopics, Publish, Publisher, Receipt};
use crate::actors::registry::{GovernedView, ProduceRoute, TopicRequest, VisibleTopic};
use crate::error::{Error, Result};
use crate::identity::{Credential, Identity, Principal};
use crate::record::{Record, RecordLimits};

#[derive(Clone)]
pub struct Rules {
    pub(crate) identity: Identity,
    approval: Addr<Approval>,
    publisher: Addr<Publisher>,
    view: GovernedView,
    direct: DirectTopics,
    /// `[limits]` on one record, as on HTTP and TCP ingest (records held by KafFlow).
    pub(crate) record_limits: RecordLimits,
}

impl Rules {
    pub fn new(
        identity: Identity,
        approval: Addr<Approval>,
        publisher: Addr<Publisher>,
        view: GovernedView,
        direct: DirectTopics,
        record_limits: RecordLimits,
    ) -> Rules {
        Rules {
            identity,
            approval,
            publisher,
            view,
            direct,
            record_limits,
        }
    }

    /// Resolves when the credential is revoked.
    pub(crate) fn revoked(&self, credential: Credential) -> BoxFuture<'static, ()> {
        self.identity.revoked(credential)
    }

    pub(crate) fn may_produce(&self, principal: &Principal, topic: &str) -> Result<ProduceRoute> {
        self.view.may_produce(principal, topic)
    }

    pub(crate) fn may_consume(&self, principal: &Principal, topic: &str) -> Result<()> {
        self.view.may_consume(principal, topic)
    }

    pub(crate) fn visible(&self, principal: &Principal) -> Vec<VisibleTopic> {
        self.view.visible(principal)
    }

    pub(crate) fn visible_topic(&self, principal: &Principal, topic: &str) -> Option<VisibleTopic> {
        self.view.visible_topic(principal, topic)
    }

    /// Whether a client's batch for `topic` may go straight to its leader now.
    pub(crate) fn is_direct(&self, topic: &str) -> bool {
        self.direct.is_direct(topic)
    }

    pub(crate) fn may_use_group(&self, principal: &Principal, group: &str) -> Result<()> {
        may_use_group(principal, group)
    }

    /// Files (or with `validate_only`, checks) a create request. The message is sent at once;
    /// the future waits for the answer.
    pub(crate) fn request_topic(
        &self,
        request: RequestTopic,
    ) -> BoxFuture<'static, Result<TopicRequest>> {
        let sent = self.approval.send(request);
        Box::pin(async move { sent.await? })
    }

    pub(crate) fn request_deletion(
        &self,
        request: RequestDeletion,
    ) -> BoxFuture<'static, Result<TopicRequest>> {
        let sent = self.approval.send(request);
        Box::pin(async move { sent.await? })
    }

    /// Records for a topic that is not published directly: held in order, or published by the
    /// publisher behind what it holds. The message is sent at once, so calls made in order
    /// reach the publisher in order.
    pub(crate) fn hold(
        &self,
        producer: &str,
        topic: &str,
        records: Vec<Record>,
    ) -> BoxFuture<'static, Result<Receipt>> {
        let sent = self.publisher.send(Publish {
            producer: producer.to_string(),
            topic: topic.to_string(),
            records,
            requested: false,
        });
        Box::pin(async move { sent.await.map_err(Error::from)? })
    }
}
