// Small helpers shared by the page's modules.

/** $ returns the element with the given id. */
export const $ = (id) => document.getElementById(id);

// Fleet and class colours: distinct on the light map, readable for most colour vision.
const PALETTE = ['#2563c9', '#e4572e', '#139a7a', '#8e44ad', '#e0a100', '#d6336c',
  '#3f7f3f', '#8c5a2b', '#0096c7', '#5c6b7a', '#b5179e', '#6a994e'];

/** Colours hands out a stable colour per key, in the order keys are first seen. */
export class Colours {
  constructor() { this.m = new Map(); }
  get(key) {
    key = key || '—';
    let c = this.m.get(key);
    if (!c) { c = PALETTE[this.m.size % PALETTE.length]; this.m.set(key, c); }
    return c;
  }
}

/** normLon brings a longitude into [-180, 180). */
export function normLon(lon) { return ((lon + 180) % 360 + 360) % 360 - 180; }

/** nearLon returns the copy of lon (lon + k·360) nearest to ref, so that what sits across the
 * antimeridian from the view's centre is drawn beside it, not a world away. */
export function nearLon(lon, ref) { return lon + 360 * Math.round((ref - lon) / 360); }

/** el makes an element with a class and, optionally, text (never HTML: names and ids come from
 * devices and operators). */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

/** quantile returns the q-quantile (0..1) of a sorted array of numbers. */
export function quantile(sorted, q) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
