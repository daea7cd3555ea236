//! The policy tables of one interface (`PolicyMaps`): a compiled policy written into the
//! inactive half, then one aligned write flips to it.

use super::*;

/// The policy tables of one interface, opened from their pins. `install` writes a compiled
/// policy into the inactive half and then flips the active half with one aligned 4-byte
/// write: a packet is judged wholly by the old policy or wholly by the new one, and a
/// failure before the flip leaves the old policy fully in force.
pub struct PolicyMaps {
    control: Array<MapData, Control>,
    config: Array<MapData, GlobalConfig>,
    ports: Array<MapData, u32>,
    rules: Array<MapData, RuleConfig>,
    allow4: LpmTrie<MapData, [u8; LIST_KEY_V4], ListValue>,
    allow6: LpmTrie<MapData, [u8; LIST_KEY_V6], ListValue>,
    deny4: LpmTrie<MapData, [u8; LIST_KEY_V4], ListValue>,
    deny6: LpmTrie<MapData, [u8; LIST_KEY_V6], ListValue>,
    /// The IPv4 lists' summary by /16 (`shield_common::lsum_slot`); absent under pins of a
    /// version without it, whose program does not read it.
    summary: Option<Array<MapData, u64>>,
    /// What each half's port table holds, when known (lets a reload write only changes).
    ports_cache: [Option<Vec<u32>>; 2],
    /// The lists each list half holds, when known.
    lists_cache: [Option<Lists>; 2],
    /// Sketch hash seed: kept from the policy in force (a restart keeps the sketch
    /// meaningful), else random.
    sketch_seed: u64,
    /// While set, an install that swaps the lists leaves the old list half as it was
    /// (`stale_lists`), so `restore_half` can still go back to the old policy whole; a
    /// daemon sets it for its start and calls `settle` once the start succeeded.
    pub keep_old_lists: bool,
    stale_lists: Option<u8>,
    /// The ids the last install gave to new rules (see `install`): rule bans still held
    /// under them are another rule's, for the daemon to drop (`take_fresh_ids`).
    fresh_ids: Vec<u16>,
    /// When the last install put its policy in force, in the data path's clock: a rule ban
    /// under one of `fresh_ids` issued since is the new rule's (the data path's, or one
    /// the daemon served while a reload ran), not the one the id had before.
    flipped_ns: u64,
    /// Whether `syncookie` rules' cookie SYN-ACKs offer timestamps (`RULE_SYNCOOKIE_TS`):
    /// `synproxy::timestamps_work()` when opened.
    pub syncookie_timestamps: bool,
    /// The pin directory (the source table, for `forget_rules`).
    dir: PathBuf,
}

/// One list's prefixes: (address, length).
type Prefixes<const A: usize> = Vec<([u8; A], u8)>;

/// A policy's four lists, as compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    pub allow_v4: Vec<([u8; 4], u8)>,
    pub allow_v6: Vec<([u8; 16], u8)>,
    pub deny_v4: Vec<([u8; 4], u8)>,
    pub deny_v6: Vec<([u8; 16], u8)>,
}

impl Lists {
    fn of(p: &CompiledPolicy) -> Lists {
        Lists {
            allow_v4: p.allow_v4.clone(),
            allow_v6: p.allow_v6.clone(),
            deny_v4: p.deny_v4.clone(),
            deny_v6: p.deny_v6.clone(),
        }
    }
    fn sorted(mut self) -> Lists {
        self.allow_v4.sort_unstable();
        self.allow_v6.sort_unstable();
        self.deny_v4.sort_unstable();
        self.deny_v6.sort_unstable();
        self
    }
}

/// What an `install` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    pub half: u32,
    pub generation: u32,
    /// Port-table slots written (all of them on a first install).
    pub ports_written: usize,
    /// The lists changed and were written into the other list half.
    pub lists_swapped: bool,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, LoaderError> {
    T::try_from(open_pinned(pin_dir, name)?).map_err(map_err(name))
}

impl PolicyMaps {
    pub fn open(pin_dir: &Path) -> Result<PolicyMaps, LoaderError> {
        let mut maps = PolicyMaps {
            control: typed(pin_dir, MAP_CONTROL)?,
            config: typed(pin_dir, MAP_CONFIG)?,
            ports: typed(pin_dir, MAP_PORTS)?,
            rules: typed(pin_dir, MAP_RULES)?,
            allow4: typed(pin_dir, MAP_ALLOW_V4)?,
            allow6: typed(pin_dir, MAP_ALLOW_V6)?,
            deny4: typed(pin_dir, MAP_DENY_V4)?,
            deny6: typed(pin_dir, MAP_DENY_V6)?,
            summary: open_pinned(pin_dir, MAP_LIST_SUMMARY)
                .ok()
                .and_then(|m| Array::try_from(m).ok()),
            ports_cache: [None, None],
            lists_cache: [None, None],
            sketch_seed: 0,
            keep_old_lists: false,
            stale_lists: None,
            fresh_ids: Vec::new(),
            flipped_ns: 0,
            syncookie_timestamps: crate::synproxy::timestamps_work(),
            dir: pin_dir.to_path_buf(),
        };
        maps.sketch_seed = match maps.active() {
            Ok((_, cfg)) if cfg.sketch_seed != 0 => cfg.sketch_seed,
            _ => random_seed(),
        };
        Ok(maps)
    }

    pub fn control(&self) -> Result<Control, LoaderError> {
        self.control.get(&0, 0).map_err(map_err(MAP_CONTROL))
    }

    /// The half in force and its config.
    pub fn active(&self) -> Result<(u32, GlobalConfig), LoaderError> {
        let half = self.control()?.active & 1;
        Ok((
            half,
            self.config.get(&half, 0).map_err(map_err(MAP_CONFIG))?,
        ))
    }

    /// Rule `id` of the policy in force (two map reads, not the whole table: a ban
    /// names its rule once per ban, and a ban storm installs tens of thousands).
    pub fn current_rule(&self, id: u32) -> Result<Option<RuleConfig>, LoaderError> {
        let (half, cfg) = self.active()?;
        if cfg.flags & CFG_LOADED == 0 || id == 0 || id >= RULE_SLOTS {
            return Ok(None);
        }
        let r = self
            .rules
            .get(&(half * RULE_SLOTS + id), 0)
            .map_err(map_err(MAP_RULES))?;
        Ok((r.flags & RULE_PRESENT != 0).then_some(r))
    }

    /// Rules of the policy in force: (id, config), for stable ids across reloads/restarts.
    pub fn current_rules(&self) -> Result<Vec<(u32, RuleConfig)>, LoaderError> {
        let (half, cfg) = self.active()?;
        if cfg.flags & CFG_LOADED == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for id in 1..RULE_SLOTS {
            let r = self
                .rules
                .get(&(half * RULE_SLOTS + id), 0)
                .map_err(map_err(MAP_RULES))?;
            if r.flags & RULE_PRESENT != 0 {
                out.push((id, r));
            }
        }
        Ok(out)
    }

    /// Stops the data path's clock at `now_ns` (tests only: the differential fuzzer; see
    /// `Control::clock_frozen`). `advance_clock` then moves it.
    pub fn freeze_clock(&mut self, now_ns: u64) -> Result<(), LoaderError> {
        let mut c = self.control()?;
        c.clock_frozen = 1;
        c.clock_offset_ns = now_ns;
        self.control.set(0, c, 0).map_err(map_err(MAP_CONTROL))
    }

    /// Moves the data path's clock (tests only; see `Control::clock_offset_ns`).
    pub fn advance_clock(&mut self, by_ns: u64) -> Result<(), LoaderError> {
        let mut c = self.control()?;
        c.clock_offset_ns = c.clock_offset_ns.wrapping_add(by_ns);
        self.control.set(0, c, 0).map_err(map_err(MAP_CONTROL))
    }

    /// Empties a list half no config points at any more.
    fn empty_list_half(&mut self, half: u8) -> Result<(), LoaderError> {
        // Packets that read the old half finish within microseconds; then the old list
        // half is emptied so a later swap starts clean.
        std::thread::sleep(std::time::Duration::from_millis(10));
        self.write_lists(half, &Lists::default())?;
        self.lists_cache[half as usize] = Some(Lists::default());
        Ok(())
    }

    /// The ids the last install gave to rules new to them (their rule bans, if any, are
    /// the removed rule's that had the id), taken.
    pub fn take_fresh_ids(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.fresh_ids)
    }

    /// When the last install put its policy in force, in the data path's clock (0 before
    /// any): the bans under its fresh ids issued before then are the ids' previous rules'.
    pub fn flipped_ns(&self) -> u64 {
        self.flipped_ns
    }

    /// After a successful start: stop keeping the old lists, and empty them.
    pub fn settle(&mut self) -> Result<(), LoaderError> {
        self.keep_old_lists = false;
        match self.stale_lists.take() {
            Some(half) => self.empty_list_half(half),
            None => Ok(()),
        }
    }

    /// Makes `half` the half in force again (undoing an `install` whose lists did not swap,
    /// or swapped under `keep_old_lists`: the old half is then intact). The old lists are
    /// then the lists in force: no longer stale, `settle` leaves them alone.
    pub fn restore_half(&mut self, half: u32) -> Result<(), LoaderError> {
        let mut ctl = self.control()?;
        ctl.active = half & 1;
        self.control.set(0, ctl, 0).map_err(map_err(MAP_CONTROL))?;
        self.stale_lists = None;
        Ok(())
    }

    /// Sets or clears CFG_BANS in the config in force.
    pub fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), LoaderError> {
        let (half, mut cfg) = self.active()?;
        let want = if on {
            cfg.flags | flag
        } else {
            cfg.flags & !flag
        };
        if want != cfg.flags {
            cfg.flags = want;
            self.config.set(half, cfg, 0).map_err(map_err(MAP_CONFIG))?;
        }
        Ok(())
    }

    /// Installs `policy` as generation `generation`: fills the inactive half, then flips.
    /// `extra_flags` are OR-ed into the new config (the daemon passes CFG_BANS while bans
    /// exist).
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        generation: u32,
        extra_flags: u32,
    ) -> Result<Installed, LoaderError> {
        let (active, active_cfg) = self.active()?;
        let loaded = active_cfg.flags & CFG_LOADED != 0;
        let half = if loaded { 1 - active } else { active };

        // A rule on an id the policy in force does not give its name (a new rule, perhaps
        // on the id of a rule removed by an earlier reload) starts without state: what
        // the maps still hold under that id (sources, counters, budget) is another rule's.
        // Nothing is judged under such an id until the flip below, so nothing comes back
        // (unless all 255 ids are taken and a new rule gets the id of one this install
        // removes: what that rule judges until the flip may leave some state).
        let mut fresh = Vec::new();
        for (id, r) in policy.rules.iter().enumerate().skip(1) {
            if r.flags & RULE_PRESENT == 0 {
                continue;
            }
            let old = if loaded {
                Some(
                    self.rules
                        .get(&(active * RULE_SLOTS + id as u32), 0)
                        .map_err(map_err(MAP_RULES))?,
                )
            } else {
                None
            };
            if old.is_none_or(|o| o.flags & RULE_PRESENT == 0 || o.name != r.name) {
                fresh.push(id as u16);
            }
        }
        if !fresh.is_empty() {
            super::forget_rules(&self.dir, &fresh)?;
        }
        self.fresh_ids = fresh;

        // Rules: 256 slots, always written in full.
        for (id, r) in policy.rules.iter().enumerate() {
            let mut r = *r;
            if self.syncookie_timestamps && r.flags & RULE_SYNCOOKIE != 0 {
                r.flags |= RULE_SYNCOOKIE_TS;
            }
            self.rules
                .set(half * RULE_SLOTS + id as u32, r, 0)
                .map_err(map_err(MAP_RULES))?;
        }
        // Ports: only what differs from what this half is known to hold.
        let base = half * PORT_TABLE_LEN;
        let known = self.ports_cache[half as usize].take();
        let mut written = 0;
        for (i, id) in policy.ports.iter().enumerate() {
            if known.as_ref().is_some_and(|k| k[i] == *id) {
                continue;
            }
            self.ports
                .set(base + i as u32, id, 0)
                .map_err(map_err(MAP_PORTS))?;
            written += 1;
        }
        self.ports_cache[half as usize] = Some(policy.ports.clone());

        // Lists: unchanged lists stay in their half; changed ones go to the other half.
        let want = Lists::of(policy).sorted();
        let current_half = if loaded { active_cfg.list_half & 1 } else { 0 };
        let current = match self.lists_cache[current_half as usize].clone() {
            Some(l) => l,
            None => self.read_lists(current_half as u8)?,
        };
        let (list_half, swapped) = if loaded && current == want {
            (current_half, false)
        } else {
            let target = if loaded {
                1 - current_half
            } else {
                current_half
            };
            self.write_lists(target as u8, &want)?;
            self.lists_cache[target as usize] = Some(want);
            (target, loaded)
        };
        if current_half != list_half {
            self.lists_cache[current_half as usize] = Some(current);
        }

        let cfg = GlobalConfig {
            flags: policy.global.flags | extra_flags,
            generation,
            list_half,
            sketch_seed: self.sketch_seed,
            ..policy.global
        };
        self.config.set(half, cfg, 0).map_err(map_err(MAP_CONFIG))?;
        // The switch: one aligned u32 in the control value.
        let mut ctl = self.control()?;
        ctl.active = half;
        let flipped_ns = ctl.now(super::mono_coarse_ns());
        self.control.set(0, ctl, 0).map_err(map_err(MAP_CONTROL))?;
        self.flipped_ns = flipped_ns;

        if swapped && self.keep_old_lists {
            self.stale_lists = Some(current_half as u8);
        } else if swapped {
            self.empty_list_half(current_half as u8)?;
        }
        Ok(Installed {
            half,
            generation,
            ports_written: written,
            lists_swapped: swapped,
        })
    }

    /// Writes list half `half`'s IPv4 summaries from its lists (before any config points
    /// at the half, or with the lists it holds already).
    fn write_summary(&mut self, half: u8, lists: &Lists) -> Result<(), LoaderError> {
        let Some(summary) = self.summary.as_mut() else {
            return Ok(());
        };
        for (deny, list) in [(false, &lists.allow_v4), (true, &lists.deny_v4)] {
            let (base, _) = shield_common::lsum_slot(half, deny, 0, 0);
            for (i, w) in shield_common::lsum_build(list).into_iter().enumerate() {
                summary
                    .set(base + i as u32, w, 0)
                    .map_err(map_err(MAP_LIST_SUMMARY))?;
            }
        }
        Ok(())
    }

    /// Opens the lists' summary or fails: for tables that write lists under this version's
    /// program, which trusts the summary (`open` leaves it out when it cannot be opened,
    /// as under pins of a version without it).
    pub(super) fn require_summary(&mut self, pin_dir: &Path) -> Result<(), LoaderError> {
        self.summary = Some(typed(pin_dir, MAP_LIST_SUMMARY)?);
        Ok(())
    }

    /// Reads both list halves from the tries (each trie listed once) and rewrites their
    /// IPv4 summaries from them. At every program load: pins of a version without the
    /// summary, or one that changed the lists without it, leave it empty or stale. What was
    /// read is kept as what each half holds, so the first `install` after it does not list
    /// the tries again (1,000,000 prefixes: about 1.5 s a listing).
    pub fn rebuild_summaries(&mut self) -> Result<(), LoaderError> {
        fn read<const N: usize, const A: usize>(
            t: &LpmTrie<MapData, [u8; N], ListValue>,
            name: &'static str,
        ) -> Result<[Prefixes<A>; 2], LoaderError> {
            let mut out = [Vec::new(), Vec::new()];
            for k in t.keys() {
                let k = k.map_err(map_err(name))?;
                let d = k.data();
                let mut a = [0u8; A];
                a.copy_from_slice(&d[1..]);
                // Only this version's keys are here: a half byte, then the address.
                if let (Some(h), Some(len)) = (
                    out.get_mut(usize::from(d[0])),
                    k.prefix_len().checked_sub(8),
                ) {
                    h.push((a, len as u8));
                }
            }
            Ok(out)
        }
        let [a4_0, a4_1] = read(&self.allow4, MAP_ALLOW_V4)?;
        let [a6_0, a6_1] = read(&self.allow6, MAP_ALLOW_V6)?;
        let [d4_0, d4_1] = read(&self.deny4, MAP_DENY_V4)?;
        let [d6_0, d6_1] = read(&self.deny6, MAP_DENY_V6)?;
        let halves = [
            Lists {
                allow_v4: a4_0,
                allow_v6: a6_0,
                deny_v4: d4_0,
                deny_v6: d6_0,
            }
            .sorted(),
            Lists {
                allow_v4: a4_1,
                allow_v6: a6_1,
                deny_v4: d4_1,
                deny_v6: d6_1,
            }
            .sorted(),
        ];
        for (half, lists) in halves.iter().enumerate() {
            self.write_summary(half as u8, lists)?;
        }
        self.lists_cache = halves.map(Some);
        Ok(())
    }

    fn read_lists(&self, half: u8) -> Result<Lists, LoaderError> {
        fn read<const N: usize, const A: usize>(
            t: &LpmTrie<MapData, [u8; N], ListValue>,
            half: u8,
            name: &'static str,
        ) -> Result<Vec<([u8; A], u8)>, LoaderError> {
            let mut out = Vec::new();
            for k in t.keys() {
                let k = k.map_err(map_err(name))?;
                let d = k.data();
                if d[0] == half {
                    let mut a = [0u8; A];
                    a.copy_from_slice(&d[1..]);
                    out.push((a, (k.prefix_len() - 8) as u8));
                }
            }
            Ok(out)
        }
        Ok(Lists {
            allow_v4: read(&self.allow4, half, MAP_ALLOW_V4)?,
            allow_v6: read(&self.allow6, half, MAP_ALLOW_V6)?,
            deny_v4: read(&self.deny4, half, MAP_DENY_V4)?,
            deny_v6: read(&self.deny6, half, MAP_DENY_V6)?,
        }
        .sorted())
    }

    /// Makes list half `half` hold exactly `want`.
    fn write_lists(&mut self, half: u8, want: &Lists) -> Result<(), LoaderError> {
        fn write<const N: usize, const A: usize>(
            t: &mut LpmTrie<MapData, [u8; N], ListValue>,
            half: u8,
            want: &[([u8; A], u8)],
            name: &'static str,
        ) -> Result<(), LoaderError>
        where
            [u8; N]: Pod,
        {
            let key = |a: &[u8; A], len: u8| {
                let mut d = [0u8; N];
                d[0] = half;
                d[1..].copy_from_slice(a);
                Key::new(u32::from(len) + 8, d)
            };
            let want_set: HashSet<([u8; A], u8)> = want.iter().copied().collect();
            let mut stale = Vec::new();
            for k in t.keys() {
                let k = k.map_err(map_err(name))?;
                let d = k.data();
                if d[0] != half {
                    continue;
                }
                let mut a = [0u8; A];
                a.copy_from_slice(&d[1..]);
                if !want_set.contains(&(a, (k.prefix_len() - 8) as u8)) {
                    stale.push(k);
                }
            }
            for k in stale {
                t.remove(&k).map_err(map_err(name))?;
            }
            for (a, len) in want {
                t.insert(&key(a, *len), 1, 0).map_err(map_err(name))?;
            }
            Ok(())
        }
        write(&mut self.allow4, half, &want.allow_v4, MAP_ALLOW_V4)?;
        write(&mut self.allow6, half, &want.allow_v6, MAP_ALLOW_V6)?;
        write(&mut self.deny4, half, &want.deny_v4, MAP_DENY_V4)?;
        write(&mut self.deny6, half, &want.deny_v6, MAP_DENY_V6)?;
        self.write_summary(half, want)
    }
}
