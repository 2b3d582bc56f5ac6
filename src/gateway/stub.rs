//! TEMPORARY stand-ins until the actor-side views land (removed at merge).
#![allow(dead_code, unused_variables)]
use crate::error::{Error, Result};
use crate::identity::Principal;

#[derive(Clone)]
pub struct GovernedView;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceRoute {
    Active,
    Pending,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisibleStatus {
    Active,
    Pending,
}
#[derive(Debug, Clone)]
pub struct VisibleTopic {
    pub name: String,
    pub status: VisibleStatus,
    pub partitions: i32,
    pub replication_factor: i32,
}
impl GovernedView {
    pub fn may_produce(&self, principal: &Principal, topic: &str) -> Result<ProduceRoute> {
        Err(Error::UnknownTopic(topic.into()))
    }
    pub fn may_consume(&self, principal: &Principal, topic: &str) -> Result<()> {
        Err(Error::UnknownTopic(topic.into()))
    }
    pub fn visible(&self, principal: &Principal) -> Vec<VisibleTopic> {
        vec![]
    }
    pub fn visible_topic(&self, principal: &Principal, topic: &str) -> Option<VisibleTopic> {
        None
    }
}
#[derive(Clone)]
pub struct DirectTopics;
impl DirectTopics {
    pub fn is_direct(&self, topic: &str) -> bool {
        false
    }
}
pub fn may_use_group(principal: &Principal, group: &str) -> Result<()> {
    Ok(())
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub partition: Option<i32>,
    pub timestamp: Option<i64>,
}
