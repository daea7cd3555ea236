//! Durations, rates and limits: `"30s"`, `"5/s"`, `{ rate = "5/s", burst = 10 }`.

use std::time::Duration;

use super::{Ctx, DURATION, Field, MAX_BURST, MAX_RATE_PER_SEC, RATE, RawLimit, WHOLE};
use crate::policy::{Limit, PolicyError, Rate, value::quote};

/// Parses `500ms`, `10s`, `5m` (or `5min`), `1h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "missing unit (ms, s, m or min, h or d)".to_string())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| "expected a whole number before the unit".to_string())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit `{unit}` (ms, s, m or min, h or d)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "too long".to_string())
}

/// The shortest exact text for a duration (`90s` → `90s`, `3600s` → `1h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

pub(super) fn duration(
    cx: &Ctx,
    s: &Field<String>,
    what: &str,
    min: Duration,
) -> Result<Duration, PolicyError> {
    let s = cx.get(s, what, DURATION)?;
    let max = Duration::from_nanos(shield_common::judge::MAX_BAN_NS);
    let d = parse_duration(s.get_ref()).map_err(|why| {
        cx.err(
            s.span(),
            format!("{what}: {why}: expected a duration like \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\", got {}", quote(s.get_ref())),
        )
    })?;
    if d < min || d > max {
        return Err(cx.err(
            s.span(),
            format!(
                "{what} must be between {} and {}, got {}",
                format_duration(min),
                format_duration(max),
                format_duration(d)
            ),
        ));
    }
    Ok(d)
}

pub(super) fn rate(cx: &Ctx, s: &Field<String>, key: &str) -> Result<Rate, PolicyError> {
    let s = cx.get(s, key, RATE)?;
    let text = s.get_ref().trim();
    let bad = |why: &str| {
        cx.err(
            s.span(),
            format!(
                "{why}: expected a rate like \"20/s\", \"600/min\", \"1000/h\" or \"10000/d\", got {}",
                quote(text)
            ),
        )
    };
    let (n, unit) = text.split_once('/').ok_or_else(|| bad("missing `/`"))?;
    let count: u64 = n
        .trim()
        .parse()
        .map_err(|_| bad("the count must be a whole number"))?;
    let period_secs = match unit.trim() {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad("the unit must be s, min, h or d")),
    };
    if count == 0 {
        return Err(bad(
            "a rate of 0 would drop everything; remove the limit or use a deny list",
        ));
    }
    if count / period_secs > MAX_RATE_PER_SEC {
        return Err(bad(&format!(
            "rates above {MAX_RATE_PER_SEC}/s are not meaningful per source"
        )));
    }
    Ok(Rate { count, period_secs })
}

pub(super) fn limit(cx: &Ctx, l: &RawLimit) -> Result<Limit, PolicyError> {
    let r = rate(cx, &l.rate, "rate")?;
    let burst = match &l.burst {
        Some(b) => {
            let b = cx.get(b, "burst", WHOLE)?;
            let v = *b.get_ref();
            if v < 1 || v as u64 > MAX_BURST {
                return Err(cx.err(
                    b.span(),
                    format!("burst must be between 1 and {MAX_BURST}, got {v}"),
                ));
            }
            v as u64
        }
        // One second's worth of the rate, at least one.
        None => r.count.div_ceil(r.period_secs).max(1),
    };
    let sustained = match &l.sustained {
        Some(s) => {
            let sr = rate(cx, s, "sustained")?;
            // Compare count/period without division: sustained must not exceed the rate.
            if u128::from(sr.count) * u128::from(r.period_secs)
                > u128::from(r.count) * u128::from(sr.period_secs)
            {
                return Err(cx.err(
                    s.span(),
                    format!(
                        "sustained rate {sr} is above the rate {r}; the sustained window should be the lower, longer-term limit"
                    ),
                ));
            }
            Some(sr)
        }
        None => None,
    };
    let out = Limit {
        rate: r,
        burst,
        sustained,
    };
    if crate::policy::compile::buckets(&out).is_none() {
        return Err(cx.err(
            l.rate.span(),
            format!("burst {burst} at {r} spans more time than the data path can track; lower the burst or raise the rate"),
        ));
    }
    Ok(out)
}
