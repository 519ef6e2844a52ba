//! The one producer every writer shares (kept traces, dead letters, re-keyed traces, the
//! decision log): a message is never given up silently. A failed delivery, or a refused
//! enqueue, is sent again after [`RETRY_PAUSE`] from a thread of its own, until the broker
//! acknowledges it; while librdkafka's queue is full, the sender waits (back-pressure).
//!
//! What differs between writers is what a message carries and what its acknowledgement or
//! failure means: a [`Deliveries`] says it (release the offsets a message holds, count it, log
//! it, or give it up for good, as a span no broker would take). Each message carries an opaque
//! value to its delivery report; dropping that value is what releases the offsets it holds.
//!
//! At shutdown ([`RetryingProducer::stop`]) a sender no longer waits on a full queue: the
//! message is left unsent and its opaque value leaked on purpose, so that the offsets it holds
//! are never committed; the next owner replays them.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::SetupError;

/// Pause before a failed message is sent again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How long a sender sleeps while librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// Where a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// librdkafka refused to enqueue it (other than for a full queue).
    Enqueue,
    /// Its delivery report is an error.
    Delivery,
}

/// A message to send, borrowed.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition, or the partitioner's choice.
    pub partition: Option<i32>,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub payload: &'a [u8],
    /// Its headers, if any.
    pub headers: Option<OwnedHeaders>,
}

/// A message that failed, owned until it is sent again.
#[derive(Debug)]
pub struct Outgoing {
    /// Its topic.
    pub topic: String,
    /// Its partition, if it was chosen by the writer (not by the partitioner).
    pub partition: Option<i32>,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Vec<u8>,
    /// Its headers, if any.
    pub headers: Option<OwnedHeaders>,
}

impl Outgoing {
    fn record(&self) -> Outbound<'_> {
        Outbound {
            topic: &self.topic,
            partition: self.partition,
            key: self.key.as_deref(),
            payload: &self.payload,
            headers: self.headers.clone(),
        }
    }
}

/// What one writer's messages mean: what an acknowledgement releases and counts, and what a
/// failure does.
pub trait Deliveries: Send + Sync + 'static {
    /// What each message carries to its delivery report (holds on offsets, most often).
    type Opaque: Send + Sync + 'static;

    /// The broker acknowledged `msg`.
    fn delivered(&self, msg: &BorrowedMessage<'_>, opaque: Self::Opaque);

    /// `out` failed at `stage` with `error`: counts and logs it, and returns the opaque value
    /// to send it again with (`out` may be changed first), or `None` when it is given up.
    fn failed(
        &self,
        stage: Stage,
        error: &KafkaError,
        out: &mut Outgoing,
        opaque: Self::Opaque,
    ) -> Option<Self::Opaque>;
}

/// What a message carries to its delivery report: the writer's opaque value, and what a
/// retry needs that the report does not say.
pub struct InFlight<O> {
    /// The partition the writer chose, if it chose one.
    partition: Option<i32>,
    opaque: O,
}

struct Retry<O> {
    out: Outgoing,
    opaque: O,
}

/// The producer's context: the writer's [`Deliveries`] and the way to the retry thread.
pub struct RetryContext<D: Deliveries> {
    deliveries: D,
    retries: mpsc::Sender<Retry<D::Opaque>>,
}

impl<D: Deliveries> RetryContext<D> {
    /// Hands a failed message to `deliveries`, and to the retry thread unless given up.
    fn failed(&self, stage: Stage, error: &KafkaError, mut out: Outgoing, opaque: D::Opaque) {
        if let Some(opaque) = self.deliveries.failed(stage, error, &mut out, opaque) {
            // Without the retry thread (shutdown) the offsets simply stay uncommitted.
            let _ = self.retries.send(Retry { out, opaque });
        }
    }
}

impl<D: Deliveries> ClientContext for RetryContext<D> {}

impl<D: Deliveries> ProducerContext for RetryContext<D> {
    type DeliveryOpaque = Box<InFlight<D::Opaque>>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let InFlight { partition, opaque } = *sent;
        match result {
            Ok(msg) => self.deliveries.delivered(msg, opaque),
            Err((e, msg)) => {
                let out = Outgoing {
                    topic: msg.topic().to_string(),
                    partition,
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    headers: msg.headers().map(|h| h.detach()),
                };
                self.failed(Stage::Delivery, e, out, opaque);
            }
        }
    }
}

/// A record as librdkafka takes it, with what it hands back when it refuses one.
type Sendable<'a, O> = BaseRecord<'a, [u8], [u8], Box<InFlight<O>>>;
type Refused<'a, O> = (KafkaError, Sendable<'a, O>);

/// A producer whose failed messages are sent again until acknowledged.
pub struct RetryingProducer<D: Deliveries> {
    // Declared first, dropped first: its thread stops before the producer is dropped (which
    // purges what is unsent and serves the reports itself).
    _poller: Poller,
    producer: Arc<BaseProducer<RetryContext<D>>>,
    stopping: AtomicBool,
}

impl<D: Deliveries> RetryingProducer<D> {
    /// A producer with the settings `config` (`what` names it in errors), whose retries run
    /// on a thread named `thread`.
    pub fn new(
        config: &ClientConfig,
        what: &'static str,
        thread: &'static str,
        deliveries: D,
    ) -> Result<Arc<Self>, SetupError> {
        let (tx, rx) = mpsc::channel::<Retry<D::Opaque>>();
        let producer: BaseProducer<_> = config
            .create_with_context(RetryContext {
                deliveries,
                retries: tx,
            })
            .map_err(SetupError::client(what))?;
        let producer = Arc::new(producer);
        let p = Arc::new(RetryingProducer {
            _poller: Poller::start(producer.clone(), what)?,
            producer,
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&p);
        super::spawn(thread, move || {
            while let Ok(r) = rx.recv() {
                std::thread::sleep(RETRY_PAUSE);
                let Some(p) = weak.upgrade() else { break };
                p.send(r.out.record(), r.opaque);
            }
        })?;
        Ok(p)
    }

    /// The writer's [`Deliveries`].
    pub fn deliveries(&self) -> &D {
        &self.producer.context().deliveries
    }

    /// Sends `record`; `opaque` goes to its delivery report. Waits while librdkafka's queue is
    /// full (unless stopping); a refusal goes to [`Deliveries::failed`].
    pub fn send(&self, record: Outbound<'_>, opaque: D::Opaque) {
        if let Err((e, r)) = self.enqueue(record, opaque) {
            let partition = r.delivery_opaque.partition;
            let out = Outgoing {
                topic: r.topic.to_string(),
                partition,
                key: r.key.map(<[u8]>::to_vec),
                payload: r.payload.map(<[u8]>::to_vec).unwrap_or_default(),
                headers: r.headers,
            };
            let context = self.producer.context();
            context.failed(Stage::Enqueue, &e, out, r.delivery_opaque.opaque);
        }
    }

    /// Sends `record` once: a refusal is returned, not retried (a failed delivery still goes
    /// to [`Deliveries::failed`]).
    pub fn try_send(&self, record: Outbound<'_>, opaque: D::Opaque) -> Result<(), KafkaError> {
        self.enqueue(record, opaque).map_err(|(e, _)| e)
    }

    /// Enqueues `record`, waiting while librdkafka's queue is full (back-pressure: a slow or
    /// absent broker; the [`Poller`] serves delivery reports meanwhile, so the queue
    /// drains). Gives up once stopping: the record is left unsent and its opaque value leaked
    /// on purpose, so that the offsets it holds stay held and the last commit cannot pass
    /// them. Any other refusal is handed back.
    // The refusal is `BaseProducer::send`'s own, handed back as it came, on a cold path.
    #[allow(clippy::result_large_err)]
    fn enqueue<'a>(
        &self,
        record: Outbound<'a>,
        opaque: D::Opaque,
    ) -> Result<(), Refused<'a, D::Opaque>> {
        let mut r = BaseRecord::with_opaque_to(
            record.topic,
            Box::new(InFlight {
                partition: record.partition,
                opaque,
            }),
        )
        .payload(record.payload);
        r.partition = record.partition;
        r.key = record.key;
        r.headers = record.headers;
        loop {
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if self.stopping.load(Ordering::Relaxed) {
                        std::mem::forget(back);
                        return Ok(());
                    }
                    r = back;
                    std::thread::sleep(QUEUE_FULL_PAUSE);
                }
                Err(refused) => return Err(refused),
            }
        }
    }

    /// Waits for every message in flight to be acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Stops waiting on a full queue (shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Messages not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// Serves a producer's delivery reports on a thread of its own, woken by librdkafka as soon as
/// the producer's event queue turns non-empty.
///
/// Written here rather than taken from rdkafka's `ThreadedProducer`, whose thread polls with a
/// 100 ms timeout that rdkafka (0.39) hands to librdkafka in whole milliseconds, rounded down:
/// the last millisecond of every poll is a busy loop of non-blocking polls and clock reads,
/// about 1 % of a core per producer, with traffic or without. No crate offers a producer
/// woken by its queue; librdkafka does (`rd_kafka_queue_cb_event_enable`), and this uses it.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    queue: Arc<Queue>,
    /// What the wake-up callback reaches, through a pointer librdkafka holds until `Drop`
    /// turns the callback off (an `Arc`, so moving the poller does not move it).
    waker: Arc<Waker>,
}

/// What librdkafka's wake-up callback reaches.
struct Waker {
    /// The poll thread.
    thread: Thread,
    /// Wake-ups so far (for the tests).
    wakes: std::sync::atomic::AtomicU64,
}

/// How long the poll thread waits without a wake-up before it looks at the queue anyway (a
/// safety net: every event that lands in the empty queue wakes it).
const POLL_IDLE: Duration = Duration::from_millis(100);

/// A reference of our own to a client's main event queue.
struct Queue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queue operations take the queue's lock; the handle may move between
// threads.
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

impl Queue {
    fn len(&self) -> usize {
        // SAFETY: the handle is valid until dropped.
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: our own reference, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

/// librdkafka's wake-up callback: called, under the queue's lock, when an event lands in the
/// empty queue.
unsafe extern "C" fn wake(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` points into the poller's `waker`, alive while the callback is on.
    let waker = unsafe { &*(opaque as *const Waker) };
    waker.wakes.fetch_add(1, Ordering::Relaxed);
    waker.thread.unpark();
}

impl Poller {
    /// Starts serving `producer`'s delivery reports.
    fn start<C: ProducerContext + 'static>(
        producer: Arc<BaseProducer<C>>,
        what: &'static str,
    ) -> Result<Self, SetupError> {
        // SAFETY: the client is alive; the reference is ours to release.
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        if queue.is_null() {
            let e = KafkaError::ClientCreation("librdkafka gave no main event queue".into());
            return Err(SetupError::client(what)(e));
        }
        let queue = Arc::new(Queue(queue));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = super::spawn("tailsift-deliver", {
            let (queue, stop) = (queue.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Acquire) {
                    if queue.len() == 0 {
                        std::thread::park_timeout(POLL_IDLE);
                        continue;
                    }
                    // One event (a batch of delivery reports), without waiting.
                    producer.poll(Duration::ZERO);
                }
                // Our reference to the queue before the client (whose last reference this
                // may be, when the poller was dropped from a report): the order the poller's
                // own drop releases them in.
                drop(queue);
                drop(producer);
            }
        })?;
        let waker = Arc::new(Waker {
            thread: thread.thread().clone(),
            wakes: Default::default(),
        });
        let opaque = Arc::as_ptr(&waker).cast_mut().cast();
        // SAFETY: the poller keeps `waker` until the callback is off (see `Drop`).
        unsafe { rdsys::rd_kafka_queue_cb_event_enable(queue.0, Some(wake), opaque) };
        // What arrived before the callback was on is served after at most `POLL_IDLE`; unpark
        // now so it is not even that.
        thread.thread().unpark();
        Ok(Poller {
            stop,
            thread: Some(thread),
            queue,
            waker,
        })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            self.waker.thread.unpark();
            // Dropped by a delivery report, on the poll thread itself (a writer's last
            // reference let go there): joining it would be joining ourselves, which panics.
            // It sees `stop` once the report returns, and lets the producer go when it ends.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        // SAFETY: the callback runs under the queue's lock, which turning it off takes: once
        // off, no call is running or to come, and the waker may go with the poller.
        unsafe { rdsys::rd_kafka_queue_cb_event_enable(self.queue.0, None, std::ptr::null_mut()) };
    }
}

/// Whether librdkafka refused to enqueue a message because it is over `message.max.bytes`:
/// no broker would take it, and retrying would stall its partition's commits forever.
pub fn refused_as_too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

/// What shutdown waits for: a writer's messages in flight.
pub trait Flush {
    /// Waits for every message in flight to be acknowledged, up to `timeout`.
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError>;
    /// Stops waiting on a full queue.
    fn stop(&self);
}

impl<D: Deliveries> Flush for RetryingProducer<D> {
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        RetryingProducer::flush(self, timeout)
    }
    fn stop(&self) {
        RetryingProducer::stop(self)
    }
}

/// Bounded shutdown of the writers: flushes each in turn, in the order given, each within
/// what is left until `deadline`, and stops it. Returns whether every one was flushed.
pub fn flush_all(deadline: Instant, writers: &[&dyn Flush]) -> bool {
    let mut flushed = true;
    for w in writers {
        let left = deadline.saturating_duration_since(Instant::now());
        flushed &= w.flush(left).is_ok();
        w.stop();
    }
    flushed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::Mutex;

    /// Reports each failure's stage, and gives the message up.
    struct Failures(Mutex<mpsc::Sender<Stage>>);

    impl Deliveries for Failures {
        type Opaque = ();
        fn delivered(&self, _: &BorrowedMessage<'_>, _: ()) {}
        fn failed(&self, stage: Stage, _: &KafkaError, _: &mut Outgoing, _: ()) -> Option<()> {
            let _ = self.0.lock().expect("sender").send(stage);
            None
        }
    }

    /// A producer whose every message fails: nothing listens at its broker's address, and a
    /// message times out after 200 ms.
    fn failing_producer<D: Deliveries>(deliveries: D) -> Arc<RetryingProducer<D>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.timeout.ms", "200");
        RetryingProducer::new(&config, "test producer", "test-retry", deliveries).expect("producer")
    }

    /// One message of one byte to topic `t`.
    fn one_byte() -> Outbound<'static> {
        Outbound {
            topic: "t",
            partition: None,
            key: None,
            payload: b"x",
            headers: None,
        }
    }

    /// Lets the last reference to its producer go from inside a delivery report, and says
    /// when the producer (which owns it) is gone.
    struct DropOnReport {
        producer: Arc<Mutex<Option<Arc<RetryingProducer<DropOnReport>>>>>,
        done: Mutex<mpsc::Sender<bool>>,
        gone: Mutex<mpsc::Sender<()>>,
    }

    impl Drop for DropOnReport {
        fn drop(&mut self) {
            let _ = self.gone.lock().map(|g| g.send(()));
        }
    }

    impl Deliveries for DropOnReport {
        type Opaque = ();
        fn delivered(&self, _: &BorrowedMessage<'_>, _: ()) {}
        fn failed(&self, _: Stage, _: &KafkaError, _: &mut Outgoing, _: ()) -> Option<()> {
            let last = self.producer.lock().expect("slot").take();
            let was_last = last.as_ref().is_some_and(|p| Arc::strong_count(p) == 1);
            drop(last);
            let _ = self.done.lock().expect("sender").send(was_last);
            None
        }
    }

    #[test]
    fn a_producer_dropped_by_its_own_delivery_report_stops_without_joining_itself() {
        let slot = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel();
        let (gone_tx, gone) = mpsc::channel();
        let deliveries = DropOnReport {
            producer: slot.clone(),
            done: tx.into(),
            gone: gone_tx.into(),
        };
        let p = failing_producer(deliveries);
        // The report will hold the only reference (the retry thread's is weak).
        *slot.lock().expect("slot") = Some(p.clone());
        p.send(one_byte(), ());
        drop(p);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)),
            Ok(true),
            "the report let the last reference go, and the drop returned"
        );
        assert_eq!(
            gone.recv_timeout(Duration::from_secs(20)),
            Ok(()),
            "the poll thread ended and the client was destroyed"
        );
    }

    /// CPU time the poll thread has used.
    fn poll_thread_cpu<D: Deliveries>(p: &RetryingProducer<D>) -> Duration {
        let thread = p._poller.thread.as_ref().expect("running");
        let mut clock: libc::clockid_t = 0;
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a live thread's handle, and out-parameters of the right types.
        unsafe {
            assert_eq!(
                libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock),
                0
            );
            assert_eq!(libc::clock_gettime(clock, &mut t), 0);
        }
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    #[test]
    fn reports_wake_the_poll_thread_which_does_not_spin_while_idle() {
        // Nothing listens there: the message times out and its report is a failure.
        let (tx, rx) = mpsc::channel();
        let p = failing_producer(Failures(tx.into()));
        p.send(one_byte(), ());
        let stage = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(
            stage,
            Ok(Stage::Delivery),
            "the failed delivery was reported"
        );
        let wakes = p._poller.waker.wakes.load(Ordering::Relaxed);
        assert!(wakes > 0, "librdkafka woke the poll thread");

        // Idle: the thread sleeps until woken. A poll with a timeout rounded down to whole
        // milliseconds spends the last one of each in a busy loop (10 ms a second).
        let before = poll_thread_cpu(&p);
        std::thread::sleep(Duration::from_secs(1));
        let used = poll_thread_cpu(&p) - before;
        assert!(
            used < Duration::from_millis(2),
            "the idle poll thread used {used:?} of CPU in a second"
        );
    }
}
