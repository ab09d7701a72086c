// Alerts on the map: the live feed's `alert` messages (docs/live-api.md, "alert"), which the
// alert engine (drover alerts, docs/alerts.md) sends through the livefeed, become a marker state
// on the vehicle (a ring in the colour of its worst active alert) and a toast. A single event
// (a harsh braking, a fence entry) comes as the alert active then cleared in one message: its
// toast shows, marked cleared. This is the one place that reads the message.
import { el } from './util.js';
import { SEVERITIES } from './vehicles.js';

// How long a toast stays, by severity (ms); 0: until the operator closes it or the alert is
// acknowledged or cleared. Nothing here makes a sound: a map is watched, not listened to.
const TOAST_MS = { info: 15000, warning: 20000, minor: 30000, major: 0, critical: 0 };
const TOASTS_MAX = 5;
const CLEARED_TOAST_MS = 8000;

/**
 * Alerts holds the active alerts per vehicle and the toasts. onSelect(device) is called when
 * the operator clicks a toast; onChange() when a vehicle's alert state changed.
 */
export class Alerts {
  constructor(container, { onSelect, onChange }) {
    this.container = container;
    this.onSelect = onSelect;
    this.onChange = onChange;
    this.byDevice = new Map(); // device -> Map(alert id -> alert)
    this.toasts = new Map(); // alert id -> {node, alert, timer}
    this.received = 0;
    this.invalid = 0;
  }

  /** handle takes an `alert` message: {"type": "alert", "alerts": [...]}. */
  handle(m) {
    const list = Array.isArray(m.alerts) ? m.alerts : m.alert ? [m.alert] : [];
    let changed = false;
    for (const a of list) {
      if (!valid(a)) { this.invalid++; console.warn('drover map: alert message ignored', a); continue; }
      this.received++;
      changed = this.apply(a) || changed;
    }
    if (changed) this.onChange();
  }

  // apply records one alert's state; it returns whether the vehicle's marker state changed.
  apply(a) {
    const before = this.severity(a.device);
    let mine = this.byDevice.get(a.device);
    if (a.state === 'cleared') {
      if (mine) { mine.delete(a.id); if (!mine.size) this.byDevice.delete(a.device); }
      this.clearToast(a);
    } else {
      if (!mine) { mine = new Map(); this.byDevice.set(a.device, mine); }
      mine.set(a.id, a);
      if (a.acknowledged) this.dropToast(a.id);
      // A late alert (found in a backfilled stretch) is history by the time it is seen: it
      // marks the vehicle while active but pops nothing up.
      else if (!a.late) this.toast(a);
    }
    return before !== this.severity(a.device);
  }

  /** severity returns the worst severity among a vehicle's active alerts, or ''. */
  severity(device) {
    const mine = this.byDevice.get(device);
    if (!mine) return '';
    let best = -1;
    for (const a of mine.values()) best = Math.max(best, SEVERITIES.indexOf(a.severity));
    return best >= 0 ? SEVERITIES[best] : '';
  }

  /** active returns a vehicle's active alerts, worst first. */
  active(device) {
    const mine = this.byDevice.get(device);
    if (!mine) return [];
    return Array.from(mine.values()).sort((a, b) => SEVERITIES.indexOf(b.severity) - SEVERITIES.indexOf(a.severity));
  }

  toast(a) {
    let t = this.toasts.get(a.id);
    if (!t) {
      const node = el('div', 'toast sev-' + a.severity);
      node.setAttribute('role', 'alert');
      node.dataset.alert = a.id;
      node.dataset.device = a.device;
      const close = el('button', 'x', '×');
      close.type = 'button'; close.title = 'Dismiss'; close.setAttribute('aria-label', 'Dismiss');
      close.onclick = (ev) => { ev.stopPropagation(); this.dropToast(a.id); };
      node.onclick = () => this.onSelect(a.device);
      t = { node, close };
      this.toasts.set(a.id, t);
      this.container.prepend(node);
      // The oldest go when there are too many.
      while (this.toasts.size > TOASTS_MAX) this.dropToast(this.toasts.keys().next().value);
    }
    t.alert = a;
    const title = el('span', 't', a.title || a.rule);
    const sev = el('span', 'sev', a.severity);
    const when = a.start_ms ? new Date(a.start_ms).toLocaleTimeString() : '';
    const detail = el('span', 'd', [a.device, a.fleet, when].filter(Boolean).join(' · '));
    t.node.replaceChildren(title, t.close, sev, detail);
    clearTimeout(t.timer);
    const ms = TOAST_MS[a.severity];
    if (ms) t.timer = setTimeout(() => this.dropToast(a.id), ms);
  }

  clearToast(a) {
    const t = this.toasts.get(a.id);
    if (!t) return;
    t.node.classList.add('cleared');
    clearTimeout(t.timer);
    t.timer = setTimeout(() => this.dropToast(a.id), CLEARED_TOAST_MS);
  }

  dropToast(id) {
    const t = this.toasts.get(id);
    if (!t) return;
    clearTimeout(t.timer);
    t.node.remove();
    this.toasts.delete(id);
  }

  state() {
    const active = [];
    for (const mine of this.byDevice.values()) {
      for (const a of mine.values()) active.push({ id: a.id, device: a.device, rule: a.rule, severity: a.severity, late: !!a.late });
    }
    const toasts = Array.from(this.toasts.values()).map((t) => ({ id: t.alert.id, device: t.alert.device,
      severity: t.alert.severity, title: t.node.querySelector('.t').textContent, cleared: t.node.classList.contains('cleared') }));
    return { received: this.received, invalid: this.invalid, active, toasts };
  }
}

// valid checks what the page relies on; anything else in an alert is optional.
function valid(a) {
  return a && typeof a.id === 'string' && a.id !== '' && typeof a.device === 'string' && a.device !== '' &&
    typeof a.rule === 'string' && SEVERITIES.includes(a.severity) && (a.state === 'active' || a.state === 'cleared');
}
