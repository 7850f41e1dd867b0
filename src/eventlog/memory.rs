//! A single node's log in memory only (`STORAGE=memory`): ids from this
//! process's own sequence, and every event handed straight to the sink.
//! What is kept for resume is the Broadcaster's retained history; a restart
//! forgets it (and an id from before it is recognised as unknown).

use std::sync::Arc;

use super::{Flow, FlowItem, LogError, Sequencer, Sink};
use crate::domain::{EventId, Outgoing};
use crate::revocations::Revocation;

pub(crate) struct MemoryLog {
    sequencer: Arc<Sequencer>,
    sink: Sink,
}

impl MemoryLog {
    pub(crate) fn new(sequencer: Arc<Sequencer>, sink: Sink) -> Self {
        Self { sequencer, sink }
    }

    pub(crate) fn append(&self, events: Vec<Outgoing>) -> Result<Vec<EventId>, LogError> {
        self.sequencer.stamp(events, |stamped| {
            let ids = stamped.iter().map(|event| event.id).collect();
            let items = stamped.into_iter().map(FlowItem::Event).collect();
            (self.sink)(Flow::Items {
                items,
                position: None,
            })?;
            Ok(ids)
        })
    }

    /// Nothing to record (the revocation list in memory is the record);
    /// the streams it covers end after everything published before it.
    pub(crate) fn revoke(&self, revocation: Revocation) -> Result<(), LogError> {
        self.sequencer.in_order(|| {
            (self.sink)(Flow::Items {
                items: vec![FlowItem::Revoke(revocation)],
                position: None,
            })
        })?;
        Ok(())
    }

    pub(crate) fn healthy(&self) -> Result<(), LogError> {
        Ok(())
    }
}
