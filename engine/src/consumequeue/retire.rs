//! Deleting the ConsumeQueue log's oldest segments once nothing needs them: every entry in
//! them points at a CommitLog record retention already deleted, and every "topic deleted"
//! record in them is below its source's watermark. Before deleting, the owner writes each
//! queue's next offset (`QueuePosition`) and every watermark again and flushes, so that the
//! rebuild of a queue whose entries all went still continues its offsets, and recovery
//! still re-dispatches from where it should. Segments go oldest first, so what survives a
//! crash part way is always a suffix of the log.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::record::{self, CqRecord};
use super::ConsumeQueues;
use crate::log::LogShared;

/// What one segment of the log refers to, per source shard.
#[derive(Debug, Clone, Default)]
pub struct SegmentRefs {
    /// One past the highest CommitLog offset an entry in it points at (0: none).
    pub cl_end: Vec<u64>,
    /// The highest `upto` of a "topic deleted" record in it (0: none).
    pub deleted_upto: Vec<u64>,
}

/// Per segment base of the ConsumeQueue log.
pub type RefMap = BTreeMap<u64, SegmentRefs>;

impl ConsumeQueues {
    fn refs_at(&self, log_offset: u64) -> std::cell::RefMut<'_, SegmentRefs> {
        let base = log_offset - log_offset % self.cq.spec.segment_bytes;
        let sources = self.marks.borrow().len();
        std::cell::RefMut::map(self.seg_refs.borrow_mut(), |m| {
            m.entry(base).or_insert_with(|| SegmentRefs {
                cl_end: vec![0; sources],
                deleted_upto: vec![0; sources],
            })
        })
    }

    /// Notes a record appended (or found by the rebuild) at `log_offset`.
    pub(super) fn note(&self, log_offset: u64, r: &CqRecord) {
        match r {
            CqRecord::Entry(e) if e.size > 0 => {
                self.note_entry(log_offset, e.source, e.cl_offset + e.size as u64)
            }
            CqRecord::TopicDeleted { source, upto, .. } => {
                self.note_deleted(log_offset, *source, *upto)
            }
            _ => {}
        }
    }

    pub(super) fn note_deleted(&self, log_offset: u64, source: u16, upto: u64) {
        let mut refs = self.refs_at(log_offset);
        if let Some(u) = refs.deleted_upto.get_mut(source as usize) {
            *u = (*u).max(upto);
        }
    }

    pub(super) fn note_entry(&self, log_offset: u64, source: u16, cl_end: u64) {
        let mut refs = self.refs_at(log_offset);
        if let Some(end) = refs.cl_end.get_mut(source as usize) {
            *end = (*end).max(cl_end);
        }
    }

    /// The oldest sealed segments nothing needs any more (see the module doc).
    fn retirable(&self, logs: &[Arc<LogShared>]) -> Vec<u64> {
        let active = self.cq.active_segment();
        let marks = self.marks.borrow();
        let bases: Vec<u64> = self.cq.segments.borrow().keys().copied().collect();
        let refs = self.seg_refs.borrow();
        let empty = SegmentRefs::default();
        bases
            .into_iter()
            .take_while(|&base| base < active)
            .take_while(|base| {
                let r = refs.get(base).unwrap_or(&empty);
                let records_gone = r.cl_end.iter().enumerate().all(|(s, &end)| {
                    end == 0
                        || logs
                            .get(s)
                            .is_some_and(|l| end <= l.min.load(Ordering::Acquire))
                });
                let deletes_covered = r
                    .deleted_upto
                    .iter()
                    .enumerate()
                    .all(|(s, &upto)| upto == 0 || marks.get(s).is_some_and(|&m| upto <= m));
                records_gone && deletes_covered
            })
            .collect()
    }

    /// Deletes the segments `retirable` names, after writing every queue's position and
    /// every watermark again and flushing them. Returns how many segments went.
    pub async fn retire_segments(&self, logs: &[Arc<LogShared>]) -> std::io::Result<usize> {
        let bases = self.retirable(logs);
        if bases.is_empty() || self.cq.failure().is_some() {
            return Ok(0);
        }
        let positions: Vec<(String, u32, u64)> = self
            .queues
            .borrow()
            .iter()
            .flat_map(|(t, qs)| {
                qs.iter()
                    .map(move |(&q, queue)| (t.clone(), q, queue.visible()))
            })
            .collect();
        for (topic, queue_id, next) in &positions {
            let len = record::queue_position_len(topic);
            self.cq.wait_for_room(len).await;
            self.cq.append(len, |pos, out| {
                record::encode_queue_position(topic, *queue_id, *next, pos, out)
            });
        }
        self.rewrite_marks();
        self.cq.kick();
        let target = self.cq.append_offset();
        if !self.cq.wait_written(target).await && self.cq.failure().is_none() {
            // Waiting for space (or stopping): retire nothing this pass rather than hold the
            // cleaner up; the positions appended are written later, harmlessly repeated.
            return Ok(0);
        }
        if self.cq.flush_once().await.is_err() {
            return Err(std::io::Error::other(
                self.cq
                    .failure()
                    .unwrap_or_else(|| "ConsumeQueue log stopped".into()),
            ));
        }
        self.cq.retire(&bases).await?;
        let mut refs = self.seg_refs.borrow_mut();
        for base in &bases {
            refs.remove(base);
        }
        tracing::info!(
            shard = self.shard,
            segments = bases.len(),
            "retention: deleted ConsumeQueue log segments"
        );
        Ok(bases.len())
    }
}
