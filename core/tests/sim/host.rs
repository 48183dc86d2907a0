//! The `Host` implementation: the glue between the state machine and
//! the simulated world.

use super::*;

// ---------------------------------------------------------------------
// The Host implementation

pub struct Sim;

/// A host error: the message, once set.
#[derive(Debug)]
pub struct SimError(pub Option<String>);

impl HostError for SimError {
    fn new() -> Self {
        SimError(None)
    }

    fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn with_message(msg: &str) -> Self {
        SimError(Some(msg.to_owned()))
    }
}

impl ListenerHost for Sim {
    fn listener(owner: &Owner) -> &Listener<Sim> {
        owner.listener()
    }
}

impl Host for Sim {
    type Channel = Channel;
    type Owner = Owner;
    type Client = Client;
    type GlibCtx = GCtx;
    type AioCtx = ACtx;
    type SourceWatch = SourceWatch;
    type AioWatch = AioWatch;
    type Timer = Timer;
    type WaitLoop = SimLoop;
    type Error = SimError;
    type Address = Addr;

    fn new_channel() -> Channel {
        Channel {
            id: world(|w| w.new_chan(ChanKind::Unbound)),
        }
    }

    fn listen(channel: &Channel, addr: &Addr, backlog: i32, err: Option<&mut SimError>) -> bool {
        match world(|w| w.listen(channel.id, addr, backlog)) {
            Ok(()) => true,
            Err(msg) => {
                if let Some(e) = err {
                    e.0 = Some(msg);
                }
                false
            }
        }
    }

    fn watch_source<R: ReadyHandler<Self>>(
        channel: &Channel,
        ctx: GCtx,
        handler: R,
    ) -> SourceWatch {
        let ch = channel.clone();
        // false: G_SOURCE_REMOVE.
        let f: HFn = Box::new(move || handler.ready(&ch));
        let chan = channel.id;
        let sid = world(|w| {
            let private = w.gctx(ctx).private;
            let fd = w.check_watchable(chan, private);
            let h = w.new_handler(f);
            w.add_source(ctx, SrcKind::Watch { chan, fd }, h)
        });
        SourceWatch { ctx, sid }
    }

    fn watch_aio<R: ReadyHandler<Self>>(channel: &Channel, ctx: ACtx, handler: R) -> AioWatch {
        let ch = channel.clone();
        let f: HFn = Box::new(move || handler.ready(&ch));
        let chan = channel.id;
        let watch = world(|w| {
            let fd = w.check_watchable(chan, false);
            let h = w.new_handler(f);
            let watch = w.id();
            if let Some(old) = w.actx(ctx).handlers.insert(
                chan,
                AioH {
                    watch,
                    fd,
                    handler: h,
                },
            ) {
                // QEMU replaces it; its release never comes.
                w.violation(format!(
                    "fd handler for socket {chan} installed over another one"
                ));
                drop(old);
            }
            watch
        });
        AioWatch { ctx, chan, watch }
    }

    fn timer_glib<T: TimerHandler>(ctx: GCtx, ms: u32, handler: T) -> Timer {
        let sid = world(|w| {
            let (h, deadline, hint) = w.new_timer(ms, handler);
            w.add_source(ctx, SrcKind::Timer { deadline, hint }, h)
        });
        Timer::Glib { ctx, sid }
    }

    fn timer_aio<T: TimerHandler>(ctx: ACtx, ms: u32, handler: T) -> Timer {
        let tid = world(|w| {
            let (h, deadline, hint) = w.new_timer(ms, handler);
            let tid = w.id();
            w.actx(ctx).timers.insert(
                tid,
                ATimer {
                    deadline,
                    handler: h,
                    fired: false,
                    hint,
                },
            );
            tid
        });
        Timer::Aio { ctx, tid }
    }

    /// The virtual clock in nanoseconds, never 0 (see `World::clock_ns`).
    fn clock_ns() -> Option<u64> {
        try_world(World::clock_ns)
    }

    fn report(msg: &str) {
        let msg = msg.to_owned();
        world(|w| {
            w.violation(format!("host report: {msg}"));
            w.emit(Event::Report(msg));
        });
    }
}
