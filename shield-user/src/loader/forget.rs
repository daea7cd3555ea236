//! Forgetting what the maps hold under rule ids about to be given to new rules
//! (`PolicyMaps::install`): a new rule starts as if its id had never been used.

use std::path::Path;

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
};
use shield_common::{
    Counter, DIAG_SOURCES_FORGOTTEN, MAP_ATTACK, MAP_BUDGET, MAP_COUNTERS, MAP_DIAG, MAP_REFUSED,
    MAP_RESETS, MAP_RULE_STATS, MAP_SOURCES, REFUSED_SLOTS, RS_SLOTS, Refused, SourceKey,
    SourceState, reason::REASON_SLOTS, rule_stat_index,
};

use super::{LoaderError, map_err, mapped::sys_err, sfilter::table_keys};

/// Forgets everything the maps hold under the rules `ids`, for rule ids that no policy in
/// force uses, about to be given to new rules: no packet is judged by them meanwhile, so
/// none can put anything back. Returns how many source-table keys it removed.
///
/// - the source table's keys of those rules: their limiter state (buckets, strikes,
///   escalation level). Their source-filter bits stay until a rebuild clears them;
/// - the refusal cache's entries: their pending refusals were judged by the old rule and
///   would be added to the new rule's state;
/// - the per-rule figures: verdict counters and non-verdict figures (`shield stats`, the
///   metrics), the `unverified` budget's and the RST limiter's buckets, the attack's start.
pub fn forget_rules(dir: &Path, ids: &[u16]) -> Result<u64, LoaderError> {
    forget_refusals(dir, ids)?;
    forget_figures(dir, ids)?;
    let mut table: HashMap<MapData, SourceKey, SourceState> = HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(dir.join(MAP_SOURCES)).map_err(map_err(MAP_SOURCES))?,
    ))
    .map_err(map_err(MAP_SOURCES))?;
    let mut removed = 0;
    for key in table_keys(dir)?.iter().filter(|k| ids.contains(&k.rule)) {
        match table.remove(key) {
            Ok(()) => removed += 1,
            // Evicted since the listing: gone as well.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_err(MAP_SOURCES)(e)),
        }
    }
    count_forgotten(dir, removed)?;
    Ok(removed)
}

/// Adds `removed` to `DIAG_SOURCES_FORGOTTEN`, so that `shield stats` does not count the
/// entries forgotten here as the LRU's evictions (inserts beyond the entries present).
fn count_forgotten(dir: &Path, removed: u64) -> Result<(), LoaderError> {
    if removed == 0 {
        return Ok(());
    }
    let Some(mut diag) = per_cpu::<u64>(dir, MAP_DIAG)? else {
        return Ok(());
    };
    let mut values: Vec<u64> = diag
        .get(&DIAG_SOURCES_FORGOTTEN, 0)
        .map_err(map_err(MAP_DIAG))?
        .to_vec();
    if let Some(first) = values.first_mut() {
        *first = first.saturating_add(removed);
    }
    let values =
        PerCpuValues::try_from(values).map_err(|e| sys_err(MAP_DIAG, "per-CPU values", e))?;
    diag.set(DIAG_SOURCES_FORGOTTEN, values, 0)
        .map_err(map_err(MAP_DIAG))
}

/// Empties the refusal cache's entries (on every CPU) of the rules `ids`. Only slots that
/// hold one are written back; an entry of another source that a CPU changed in such a slot
/// meanwhile loses at most its cached refusal and its pending count (under a second's).
fn forget_refusals(dir: &Path, ids: &[u16]) -> Result<(), LoaderError> {
    let Some(mut cache) = per_cpu::<Refused>(dir, MAP_REFUSED)? else {
        return Ok(());
    };
    for i in 0..REFUSED_SLOTS {
        clear_where(&mut cache, MAP_REFUSED, i, |e| ids.contains(&e.key.rule))?;
    }
    Ok(())
}

/// Zeroes the per-rule figures of the rules `ids`: on every CPU for the per-CPU ones.
fn forget_figures(dir: &Path, ids: &[u16]) -> Result<(), LoaderError> {
    if let Some(mut counters) = per_cpu::<Counter>(dir, MAP_COUNTERS)? {
        for &id in ids {
            for reason in 0..REASON_SLOTS {
                // `counter_index`'s layout, every slot (a reason not yet named included).
                let i = u32::from(id) * REASON_SLOTS + reason;
                clear_where(&mut counters, MAP_COUNTERS, i, |c| *c != Counter::default())?;
            }
        }
    }
    if let Some(mut stats) = per_cpu::<u64>(dir, MAP_RULE_STATS)? {
        for &id in ids {
            for slot in 0..RS_SLOTS {
                let i = rule_stat_index(u32::from(id), slot);
                clear_where(&mut stats, MAP_RULE_STATS, i, |v| *v != 0)?;
            }
        }
    }
    for name in [MAP_BUDGET, MAP_RESETS, MAP_ATTACK] {
        if !dir.join(name).exists() {
            continue;
        }
        let mut a: Array<MapData, u64> = Array::try_from(Map::Array(
            MapData::from_pin(dir.join(name)).map_err(map_err(name))?,
        ))
        .map_err(map_err(name))?;
        for &id in ids {
            a.set(u32::from(id), 0, 0).map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// The pinned per-CPU array `name` of `dir`, or None where the pin is absent (pins left by
/// a version without it).
fn per_cpu<T: Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<Option<PerCpuArray<MapData, T>>, LoaderError> {
    if !dir.join(name).exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    PerCpuArray::try_from(Map::PerCpuArray(data))
        .map(Some)
        .map_err(map_err(name))
}

/// Sets slot `i` to its default on every CPU where `stale` holds, writing only if one does.
fn clear_where<T: Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    name: &'static str,
    i: u32,
    stale: impl Fn(&T) -> bool,
) -> Result<(), LoaderError> {
    let values = map.get(&i, 0).map_err(map_err(name))?;
    if !values.iter().any(&stale) {
        return Ok(());
    }
    let kept: Vec<T> = values
        .iter()
        .map(|v| if stale(v) { T::default() } else { *v })
        .collect();
    let values = PerCpuValues::try_from(kept).map_err(|e| sys_err(name, "per-CPU values", e))?;
    map.set(i, values, 0).map_err(map_err(name))
}
