//! A shard's CommitLog: segment files, the write planner and the task that submits its writes.

pub mod segment;
pub mod writer;

use std::rc::Rc;

use crate::io::SegmentFile;
use crate::shard::Shard;

/// Submits the planner's writes as they become possible, until the shard stops.
pub async fn writer_loop(shard: Rc<Shard>) {
    let first = shard.written();
    let mut current = shard.planner.borrow().segment_base(first);
    prepare_next(&shard, current);
    let in_flight_max = shard.config.writes_in_flight_max;
    loop {
        let generation = shard.writer_wake.generation();
        if shard.stopped() {
            return;
        }
        let op = shard.planner.borrow_mut().next_write(in_flight_max);
        let Some(op) = op else {
            shard.writer_wake.wait_past(generation).await;
            continue;
        };
        if op.segment_base != current {
            // Recovery relies on it: no byte reaches a segment before the one before it is
            // whole and durable.
            if roll_barrier(&shard).await.is_err() {
                return;
            }
            current = op.segment_base;
            prepare_next(&shard, current);
        }
        let file = match segment(&shard, op.segment_base).await {
            Ok(f) => f,
            Err(e) => {
                shard.fail(format!("cannot create segment {}: {e}", op.segment_base));
                return;
            }
        };
        glommio::spawn_local(write_one(shard.clone(), file, op)).detach();
    }
}

async fn write_one(
    shard: Rc<Shard>,
    file: Rc<SegmentFile>,
    op: writer::WriteOp<glommio::io::DmaBuffer>,
) {
    let (id, pos, len) = (op.id, op.file_pos, op.buf.len());
    let buf = Rc::new(op.buf);
    let result = file.write_at(buf.clone(), pos).await;
    if let Ok(buf) = Rc::try_unwrap(buf) {
        shard.recycle(buf);
    }
    match result {
        Ok(_) => {
            let written = shard.planner.borrow_mut().complete(id);
            shard.on_written(written);
        }
        Err(e) => {
            shard.fail(format!(
                "write of {len} bytes at {pos} of {} failed: {e}",
                file.path().display()
            ));
        }
    }
}

/// The planner hands out a new segment's first write only once every earlier write has
/// completed; flushing now makes the old segment whole and durable before it is submitted.
async fn roll_barrier(shard: &Rc<Shard>) -> Result<(), ()> {
    debug_assert_eq!(
        shard.planner.borrow().in_flight(),
        1,
        "only the new segment's write"
    );
    shard.flush_once().await
}

/// Creates the segment after `base` in the background, so a roll rarely waits for it.
fn prepare_next(shard: &Rc<Shard>, base: u64) {
    let shard = shard.clone();
    let next = base + shard.config.segment_size_bytes;
    glommio::spawn_local(async move {
        if let Err(e) = segment(&shard, next).await {
            tracing::warn!(shard = shard.id, base = next, error = %e, "cannot preallocate segment");
        }
    })
    .detach();
}

/// The segment starting at `base`, created (and preallocated) once if it does not exist.
pub async fn segment(shard: &Rc<Shard>, base: u64) -> std::io::Result<Rc<SegmentFile>> {
    loop {
        if let Some(f) = shard.segments.borrow().get(&base) {
            return Ok(f.clone());
        }
        if shard.stopped() {
            return Err(std::io::Error::other("shard stopped"));
        }
        if shard.creating.borrow().contains(&base) {
            let generation = shard.segment_ready.generation();
            shard.segment_ready.wait_past(generation).await;
            continue;
        }
        shard.creating.borrow_mut().insert(base);
        let plan = shard.config.fault_plan.clone();
        let created =
            segment::create_segment(&shard.dir, base, shard.config.segment_size_bytes, plan).await;
        shard.creating.borrow_mut().remove(&base);
        shard.segment_ready.notify();
        let file = Rc::new(created?);
        shard.segments.borrow_mut().insert(base, file.clone());
        return Ok(file);
    }
}
