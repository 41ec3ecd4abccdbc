//! Configured snapshots: at load, one instance of a plugin's instrumented image runs
//! `configure`, and wizer writes its memories and globals out as a new component whose
//! instances start configured. Each request still gets a fresh instance, now from that image:
//! `configure` never runs on the request path, and isolation is what it was.
//!
//! What a snapshot cannot carry makes the plugin fall back to configuring every instance:
//! host-side state (a WASI stream the guest opened during `configure` lives in the store, not
//! in the guest's memory) and components wizer refuses. Random seeds drawn during `configure`
//! are frozen into the image, shared by all its instances.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::ComponentInstanceState;

use super::PreparedPlugin;
use super::error::PluginError;
use super::images;
use super::instance::PluginInstance;
use super::store::{PluginStore, begin_call, end_call};

/// The deadline for reading a configured instance's state out.
const STATE_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Configures one instance of `plugin` (whose image is `component_bytes` instrumented) and
/// snapshots it. The outer error is the plugin's (it refused its configuration, trapped, ran out
/// of time or memory): the load fails. The inner one says why there is no snapshot: the plugin
/// still loads, configuring every instance.
pub(super) async fn take(
    plugin: &Arc<PreparedPlugin>,
    component_bytes: Arc<[u8]>,
) -> Result<Result<Vec<u8>, String>, PluginError> {
    let (mut instance, raw) = PluginInstance::configured_for_snapshot(plugin).await?;
    if instance.store_mut().data().holds_host_resources() {
        return Ok(Err(
            "configure left live WASI resources (such as an open stdout stream), \
             which live in the host and cannot be part of a snapshot"
                .to_owned(),
        ));
    }
    // On a task of its own, so that a panic in wizer costs this plugin its snapshot, not the
    // process its load.
    let snapshot = tokio::spawn(async move {
        let store = instance.store_mut();
        snapshot(store, raw, &component_bytes).await
    });
    Ok(match snapshot.await {
        Ok(outcome) => outcome,
        Err(err) if err.is_panic() => Err("wizer panicked while writing the snapshot".to_owned()),
        Err(err) => Err(format!("the snapshot task ended early: {err}")),
    })
}

async fn snapshot(
    store: &mut Store<PluginStore>,
    instance: Instance,
    component_bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let wizer = images::wizer();
    let (context, _) = wizer
        .instrument_component(component_bytes)
        .map_err(|err| format!("wizer cannot instrument it: {err:#}"))?;
    // Reading the state runs wizer's accessors, not plugin code: a large memory (an interpreter's
    // heap) may take longer than the plugin's own deadline to copy out, and must not lose its
    // snapshot to that.
    store.data_mut().time_limit = STATE_READ_LIMIT;
    begin_call(store);
    let mut state = SnapshotAccess {
        store,
        instance,
        failure: None,
    };
    let snapshot = wizer.snapshot_component(&context, &mut state).await;
    end_call(state.store);
    match (state.failure, snapshot) {
        (Some(failure), _) => Err(format!("reading its state failed: {failure}")),
        (None, Err(err)) => Err(format!("wizer cannot snapshot it: {err:#}")),
        (None, Ok(bytes)) => Ok(bytes),
    }
}

/// What wizer reads a configured instance's state through: its accessor exports, called in
/// the plugin's own store. Wizer's interface cannot fail, so the first failure is kept here and
/// the snapshot is thrown away after it.
struct SnapshotAccess<'a> {
    store: &'a mut Store<PluginStore>,
    instance: Instance,
    failure: Option<String>,
}

impl SnapshotAccess<'_> {
    async fn call<R: Lift + Send + 'static, V: Default>(
        &mut self,
        interface: &str,
        func: &str,
        read: impl FnOnce(&Store<PluginStore>, R) -> V,
    ) -> V {
        if self.failure.is_some() {
            return V::default();
        }
        match self.try_call::<R>(interface, func).await {
            Ok(value) => read(&*self.store, value),
            Err(err) => {
                self.failure = Some(format!("{interface}#{func}: {err:#}"));
                V::default()
            }
        }
    }

    async fn try_call<R: Lift + Send + 'static>(
        &mut self,
        interface: &str,
        func: &str,
    ) -> wasmtime::Result<R> {
        let missing = || wasmtime::format_err!("no such export");
        let (_, interface) = self
            .instance
            .get_export(&mut *self.store, None, interface)
            .ok_or_else(missing)?;
        let (_, func) = self
            .instance
            .get_export(&mut *self.store, Some(&interface), func)
            .ok_or_else(missing)?;
        let func = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, func)?;
        let (value,) = func.call_async(&mut *self.store, ()).await?;
        Ok(value)
    }
}

/// A memory's contents as the guest returned them; none when the call failed.
#[derive(Default)]
struct MaybeList(Option<WasmList<u8>>);

impl ComponentInstanceState for SnapshotAccess<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let list = self
            .call(instance, func, |_, list: WasmList<u8>| {
                MaybeList(Some(list))
            })
            .await;
        match list.0 {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            // The failure is recorded and the snapshot discarded; an empty memory may make
            // wizer panic, which the snapshot task turns into the same fallback.
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, value| value).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, value| value).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, value: f32| value.to_bits())
            .await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, value: f64| value.to_bits())
            .await
    }
}
