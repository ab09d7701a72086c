// The vehicle layer: every vehicle the feed sends, clustered with supercluster and drawn on one
// canvas that Leaflet moves and zooms with the map (the layer is a Leaflet Renderer, like
// Leaflet's own canvas for vector paths, so pan and zoom animations keep it in place).
//
// Why not a Leaflet marker per vehicle (Leaflet.markercluster): a DOM marker per vehicle and a
// re-clustering of each moved marker through every zoom level is fine for thousands of still
// markers, not for 10,000 moving once a second. Here an update only changes a Map entry; the
// cluster index (a KD-tree over every zoom, supercluster, by Leaflet's author and the clustering
// inside MapLibre GL) is rebuilt from scratch at most a few times a second (about 10 ms for
// 10,000 vehicles), and a frame draws only what the view shows: clusters and the vehicles
// standing alone, never more than the screen holds.
import L from 'leaflet';
import Supercluster from 'supercluster';
import { nearLon } from './util.js';

/** ANIM_MS is how long a vehicle glides to a new position. */
export const ANIM_MS = 600;
/** STALE_MS: a vehicle silent this long is drawn grey. */
export const STALE_MS = 5 * 60 * 1000;
/** SEVERITIES ranks alert severities; a marker shows its vehicle's worst active alert. */
export const SEVERITIES = ['info', 'warning', 'minor', 'major', 'critical'];
/** SEV_COLOURS are the alert colours (map.css has the same as --sev-*). */
export const SEV_COLOURS = { critical: '#b3122e', major: '#e4572e', minor: '#e0a100', warning: '#c98a00', info: '#2563c9' };

// Clustering: vehicles within CLUSTER_RADIUS pixels are grouped when at least CLUSTER_MIN of
// them crowd, up to zoom CLUSTER_MAX_ZOOM; above it every vehicle stands alone.
const CLUSTER_RADIUS = 44;
const CLUSTER_MIN = 4;
const CLUSTER_MAX_ZOOM = 15;
// The index is rebuilt at most every INDEX_MIN_MS, and never more often than it takes
// INDEX_BUDGET times its own build time (so a slow laptop spends at most ~1/16 of a core on it).
const INDEX_MIN_MS = 250;
const INDEX_BUDGET = 16;
// While vehicles glide, at most one frame per FRAME_MS: a screen watched all day should not heat
// the room.
const FRAME_MS = 32;
// Labels show when the view is close (LABEL_ZOOM) or holds few vehicles, for at most
// LABELS_MAX of them.
const LABEL_ZOOM = 11;
const LABELS_FEW = 40;
const LABELS_MAX = 150;
// Markers are drawn from sprites: one per kind, colour and heading (in HEADING_STEP degrees).
const HEADING_STEP = 5;
const SPRITES_MAX = 3000;

const ease = (t) => 1 - Math.pow(1 - t, 3);

/**
 * VehicleLayer keeps the vehicles and draws them. Options: colour(v) (the marker's colour),
 * severity(id) (the worst active alert's severity of a vehicle, or ''), reducedMotion.
 */
export const VehicleLayer = L.Renderer.extend({
  options: { padding: 0.1, pane: 'vehicles' },

  initialize(options) {
    L.Renderer.prototype.initialize.call(this, options);
    this.vehicles = new Map(); // id -> entry {v, lat, lon, fromLat, fromLon, t0, f, lx, ly}
    this.selected = null;
    this.colourByFleet = true;
    this.index = null;
    this.indexDirty = true;
    this.indexMs = 0;
    this.indexAt = -1e9;
    this.indexBuilds = 0;
    this.clusters = []; // [{lat, lon, count, fleet, sev, id, lx, ly, r}]
    this.points = []; // entries drawn alone
    this.pointIds = new Set();
    this.queryDirty = true;
    this.dirty = true; // something on screen changed since the last frame
    this.framePending = false;
    this.lastFrame = 0;
    this.animating = false;
    this.frameHook = null; // perf: called with the time a frame took
    this.sprites = new Map();
  },

  // ---- Leaflet Renderer ----
  _initContainer() {
    const c = (this._container = document.createElement('canvas'));
    c.className = 'drover-vehicles';
    c.style.pointerEvents = 'none'; // the map takes the clicks; pick() finds the vehicle
    this._ctx = c.getContext('2d');
  },
  _destroyContainer() {
    L.Util.cancelAnimFrame(this._raf);
    clearTimeout(this.indexTimer);
    L.DomUtil.remove(this._container);
    delete this._ctx;
    delete this._container;
  },
  _update() {
    if (this._map._animatingZoom && this._bounds) return;
    L.Renderer.prototype._update.call(this);
    const b = this._bounds, size = b.getSize(), c = this._container, dpr = window.devicePixelRatio || 1;
    L.DomUtil.setPosition(c, b.min);
    c.width = Math.round(dpr * size.x); c.height = Math.round(dpr * size.y);
    c.style.width = size.x + 'px'; c.style.height = size.y + 'px';
    this._ctx.setTransform(dpr, 0, 0, dpr, -b.min.x * dpr, -b.min.y * dpr);
    this.queryDirty = true;
    this.draw(performance.now());
  },
  _updatePaths() {},

  // ---- the vehicles ----
  /** upsert applies a vehicle's new state; with animate it glides from where it is drawn. */
  upsert(v, now, animate) {
    let e = this.vehicles.get(v.id);
    if (!e) {
      e = { v, f: { type: 'Feature', properties: { id: v.id, fleet: v.fleet, sev: 0 }, geometry: { type: 'Point', coordinates: [0, 0] } } };
      this.vehicles.set(v.id, e);
    }
    if (v.lat !== undefined && v.lon !== undefined) {
      if (e.lat !== v.lat || e.lon !== v.lon) {
        if (animate && e.lat !== undefined && !this.options.reducedMotion && this.visibleMove(e, v)) {
          const p = this.position(e, now);
          e.fromLat = p[0]; e.fromLon = p[1]; e.t0 = now;
        } else {
          e.t0 = 0;
        }
        e.lat = v.lat; e.lon = v.lon;
        this.indexDirty = true;
      }
    }
    if (e.v.fleet !== v.fleet) this.indexDirty = true;
    e.v = v;
    // A vehicle drawn alone changes the picture now; one inside a cluster or off screen only
    // when the index is next rebuilt.
    if (this.pointIds.has(v.id)) this.dirty = true;
    this.requestFrame();
  },

  // visibleMove reports whether moving e to v's position moves its marker by a pixel or more
  // at this zoom: a glide below that costs frames and shows nothing.
  visibleMove(e, v) {
    if (!this._map) return false;
    const pxPerDeg = 256 * Math.pow(2, this._map.getZoom()) / 360;
    const dx = (v.lon - e.lon) * pxPerDeg;
    const dy = (v.lat - e.lat) * pxPerDeg / Math.max(0.05, Math.cos(v.lat * Math.PI / 180));
    return dx * dx + dy * dy >= 1;
  },
  /** remove forgets a vehicle. */
  remove(id) {
    if (this.vehicles.delete(id)) { this.indexDirty = true; this.dirty = true; this.requestFrame(); }
  },
  /** replace keeps only the vehicles of list (a snapshot), gliding those already shown. */
  replace(list, now) {
    const keep = new Set(list.map((v) => v.id));
    for (const id of this.vehicles.keys()) if (!keep.has(id)) this.vehicles.delete(id);
    for (const v of list) this.upsert(v, now, true);
    this.indexDirty = true;
    this.dirty = true;
    this.requestFrame();
  },
  /** alertsChanged redraws after a vehicle's alert state changed. */
  alertsChanged() { this.indexDirty = true; this.dirty = true; this.requestFrame(); },
  setSelected(id) { this.selected = id; this.indexDirty = true; this.dirty = true; this.requestFrame(); },
  setColourByFleet(on) { this.colourByFleet = on; this.dirty = true; this.requestFrame(); },

  /** position returns where e is drawn at time now: on its way to its newest position. */
  position(e, now) {
    if (!e.t0) return [e.lat, e.lon];
    const t = (now - e.t0) / ANIM_MS;
    if (t >= 1) { e.t0 = 0; return [e.lat, e.lon]; }
    const k = ease(Math.max(0, t));
    let dl = e.lon - e.fromLon;
    dl -= Math.round(dl / 360) * 360; // the short way across the antimeridian
    return [e.fromLat + (e.lat - e.fromLat) * k, e.fromLon + dl * k];
  },

  // ---- frames ----
  requestFrame() {
    if (this.framePending || !this._map) return;
    this.framePending = true;
    this._raf = L.Util.requestAnimFrame(this._frame, this);
  },
  _frame() {
    this.framePending = false;
    const now = performance.now();
    if (this._map._animatingZoom) { this.requestFrame(); return; }
    if (this.animating && now - this.lastFrame < FRAME_MS) { this.requestFrame(); return; }
    const indexDue = this.indexDirty && now - this.indexAt >= Math.max(INDEX_MIN_MS, INDEX_BUDGET * this.indexMs);
    // Nothing on screen changed (updates of clustered or far vehicles, the index not yet due):
    // no frame. A full-screen canvas is costly to composite without a GPU.
    if (this.dirty || this.animating || indexDue || this.queryDirty) {
      this.lastFrame = now;
      this.draw(now);
    }
    if (this.animating) this.requestFrame();
    else if (this.indexDirty) {
      // Vehicles moved but the index was rebuilt too recently: draw again when it is due.
      clearTimeout(this.indexTimer);
      const due = this.indexAt + Math.max(INDEX_MIN_MS, INDEX_BUDGET * this.indexMs) - now;
      this.indexTimer = setTimeout(() => this.requestFrame(), Math.max(0, due));
    }
  },

  // rebuild loads every positioned vehicle but the selected one (drawn on its own, never
  // hidden in a cluster) into a new index.
  rebuild(now) {
    const t0 = performance.now();
    if (!this.index) {
      this.index = new Supercluster({
        radius: CLUSTER_RADIUS, minPoints: CLUSTER_MIN, maxZoom: CLUSTER_MAX_ZOOM,
        map: (p) => ({ fleet: p.fleet, sev: p.sev }),
        reduce: (acc, p) => { if (acc.fleet !== p.fleet) acc.fleet = null; if (p.sev > acc.sev) acc.sev = p.sev; },
      });
    }
    const sev = this.options.severity;
    const pts = [];
    for (const e of this.vehicles.values()) {
      if (e.lat === undefined || e.v.id === this.selected) continue;
      const f = e.f;
      f.geometry.coordinates[0] = e.lon; f.geometry.coordinates[1] = e.lat;
      f.properties.fleet = e.v.fleet;
      f.properties.sev = sev ? SEVERITIES.indexOf(sev(e.v.id)) + 1 : 0;
      pts.push(f);
    }
    this.index.load(pts);
    this.indexDirty = false;
    this.indexAt = now;
    this.indexMs = performance.now() - t0;
    this.indexBuilds++;
    this.queryDirty = true;
  },

  // query asks the index what the view (and the canvas's margin) shows at this zoom.
  query() {
    const map = this._map;
    const b = map.getBounds().pad(this.options.padding);
    const zoom = map.getZoom(), clng = map.getCenter().lng;
    let west = b.getWest(), east = b.getEast();
    if (east - west >= 360) { west = -180; east = 180; }
    const found = this.index ? this.index.getClusters([west, Math.max(-90, b.getSouth()), east, Math.min(90, b.getNorth())], zoom) : [];
    this.clusters = []; this.points = []; this.pointIds = new Set();
    for (const f of found) {
      const [lon, lat] = f.geometry.coordinates;
      if (f.properties.cluster) {
        this.clusters.push({ lat, lon: nearLon(lon, clng), count: f.properties.point_count, id: f.properties.cluster_id,
          fleet: f.properties.fleet, sev: f.properties.sev });
      } else {
        const e = this.vehicles.get(f.properties.id);
        if (e) { this.points.push(e); this.pointIds.add(e.v.id); }
      }
    }
    const sel = this.selected && this.vehicles.get(this.selected);
    if (sel && sel.lat !== undefined) { this.points.push(sel); this.pointIds.add(sel.v.id); }
    this.queryDirty = false;
  },

  draw(now) {
    const map = this._map, ctx = this._ctx;
    if (!map || !ctx || !this._bounds) return;
    const t0 = performance.now();
    if (this.indexDirty && now - this.indexAt >= Math.max(INDEX_MIN_MS, INDEX_BUDGET * this.indexMs)) this.rebuild(now);
    if (this.queryDirty) this.query();
    const b = this._bounds;
    ctx.clearRect(b.min.x, b.min.y, b.max.x - b.min.x, b.max.y - b.min.y);
    const clng = map.getCenter().lng;
    const zoom = map.getZoom();
    const many = this.vehicles.size > 400;
    const r = many ? 5 : 7;
    for (const c of this.clusters) {
      const p = map.latLngToLayerPoint([c.lat, c.lon]);
      c.lx = p.x; c.ly = p.y; c.r = Math.round(11 + Math.min(10, Math.log2(c.count) * 2));
      this.drawCluster(ctx, c);
    }
    this.animating = false;
    const wall = Date.now();
    // The selected vehicle last, so that it is on top.
    for (const e of this.points) {
      const pos = this.position(e, now);
      if (e.t0) this.animating = true;
      const p = map.latLngToLayerPoint([pos[0], nearLon(pos[1], clng)]);
      e.lx = p.x; e.ly = p.y;
      if (e.v.id !== this.selected) this.drawMarker(ctx, e, r, wall);
    }
    const sel = this.selected && this.vehicles.get(this.selected);
    if (sel && this.pointIds.has(sel.v.id)) this.drawMarker(ctx, sel, r, wall);
    if (zoom >= LABEL_ZOOM || this.points.length <= LABELS_FEW) this.drawLabels(ctx, r);
    this.dirty = false;
    const took = performance.now() - t0;
    if (this.frameHook) this.frameHook(took);
  },

  drawCluster(ctx, c) {
    ctx.save();
    const col = c.fleet && this.colourByFleet ? this.options.colour({ fleet: c.fleet }) : '#3a4a5c';
    const sp = this.clusterSprite(col, c.r);
    ctx.drawImage(sp.canvas, c.lx - sp.size / 2, c.ly - sp.size / 2, sp.size, sp.size);
    ctx.fillStyle = '#ffffff'; ctx.font = '600 12px system-ui, "DejaVu Sans", sans-serif';
    ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
    ctx.fillText(String(c.count), c.lx, c.ly + 0.5);
    if (c.sev) {
      // A badge in the colour of the worst alert inside.
      const bx = c.lx + c.r * 0.72, by = c.ly - c.r * 0.72;
      ctx.beginPath(); ctx.arc(bx, by, 5.5, 0, 2 * Math.PI);
      ctx.fillStyle = SEV_COLOURS[SEVERITIES[c.sev - 1]]; ctx.fill();
      ctx.lineWidth = 1.5; ctx.strokeStyle = '#fff'; ctx.stroke();
    }
    ctx.restore();
  },

  // clusterSprite is a cluster's disc of a colour and radius, drawn once (see sprite).
  clusterSprite(col, r) {
    const key = 'cluster' + col + '/' + r;
    let sp = this.sprites.get(key);
    if (sp) return sp;
    const dpr = window.devicePixelRatio || 1;
    const size = Math.ceil(2 * r + 12);
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = Math.ceil(size * dpr);
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, size * dpr / 2, size * dpr / 2);
    g.shadowColor = 'rgba(20,35,55,.35)'; g.shadowBlur = 4; g.shadowOffsetY = 1;
    g.beginPath(); g.arc(0, 0, r, 0, 2 * Math.PI);
    g.fillStyle = col; g.fill();
    g.shadowColor = 'transparent';
    g.lineWidth = 3; g.strokeStyle = 'rgba(255,255,255,.85)'; g.stroke();
    sp = { canvas, size };
    this.sprites.set(key, sp);
    return sp;
  },

  drawMarker(ctx, e, r, wall) {
    const v = e.v, x = e.lx, y = e.ly;
    const stale = wall - (v.recv_ms || v.time_ms) > STALE_MS;
    const moving = v.heading_deg !== undefined && (v.speed_kmh === undefined || v.speed_kmh > 1);
    const col = stale ? '#9aa6b2' : this.options.colour(v);
    const sev = this.options.severity ? this.options.severity(v.id) : '';
    if (v.id === this.selected) {
      ctx.beginPath(); ctx.arc(x, y, r + 6, 0, 2 * Math.PI);
      ctx.fillStyle = 'rgba(37,99,201,.18)'; ctx.fill();
      ctx.lineWidth = 2; ctx.strokeStyle = '#1d2733'; ctx.stroke();
    }
    if (sev) {
      // The alert state: a halo and a ring in the colour of the worst active alert.
      ctx.beginPath(); ctx.arc(x, y, r + 5, 0, 2 * Math.PI);
      ctx.fillStyle = SEV_COLOURS[sev] + '33'; ctx.fill();
      ctx.lineWidth = 3; ctx.strokeStyle = SEV_COLOURS[sev]; ctx.stroke();
    }
    const kind = v.ignition === false ? 'off' : moving ? 'arrow' : 'disc';
    const bucket = kind === 'arrow' ? Math.round(((v.heading_deg % 360) + 360) % 360 / HEADING_STEP) % (360 / HEADING_STEP) : 0;
    const sp = this.sprite(kind, col, bucket, r);
    ctx.drawImage(sp.canvas, x - sp.size / 2, y - sp.size / 2, sp.size, sp.size);
  },

  // sprite returns the marker of a kind, colour, heading (in HEADING_STEP buckets) and size,
  // drawn once on a small canvas: a frame then copies it (drawImage) instead of drawing a
  // shadowed path per vehicle, which is what costs on a laptop without a GPU.
  sprite(kind, col, bucket, r) {
    const key = kind + col + bucket + '/' + r;
    let sp = this.sprites.get(key);
    if (sp) return sp;
    if (this.sprites.size > SPRITES_MAX) this.sprites.clear();
    const dpr = window.devicePixelRatio || 1;
    const size = Math.ceil(r * 3.4 + 10);
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = Math.ceil(size * dpr);
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, size * dpr / 2, size * dpr / 2);
    g.shadowColor = 'rgba(20,35,55,.35)'; g.shadowBlur = 3; g.shadowOffsetY = 1;
    g.beginPath();
    if (kind === 'arrow') {
      // A navigation arrow pointing where the vehicle heads.
      const a = bucket * HEADING_STEP * Math.PI / 180, c = Math.cos(a), s = Math.sin(a);
      const pts = [[0, -1.55], [1.1, 1.1], [0, 0.5], [-1.1, 1.1]];
      pts.forEach((p, i) => {
        const px = (p[0] * c - p[1] * s) * r, py = (p[0] * s + p[1] * c) * r;
        if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
      });
      g.closePath();
    } else {
      g.arc(0, 0, r * 0.9, 0, 2 * Math.PI);
    }
    g.lineJoin = 'round';
    g.fillStyle = kind === 'off' ? '#ffffff' : col;
    g.fill();
    g.shadowColor = 'transparent';
    // Engine off: a ring in the vehicle's colour.
    if (kind === 'off') { g.lineWidth = 2.5; g.strokeStyle = col; } else { g.lineWidth = 1.5; g.strokeStyle = '#ffffff'; }
    g.stroke();
    sp = { canvas, size };
    this.sprites.set(key, sp);
    return sp;
  },

  // drawLabels writes vehicle ids beside their markers where they overlap nothing already drawn;
  // the selected vehicle's first.
  drawLabels(ctx, r) {
    const list = this.points.slice(-LABELS_MAX);
    const boxes = list.map((e) => [e.lx - r - 1, e.ly - r - 1, e.lx + r + 1, e.ly + r + 1]);
    ctx.save();
    ctx.font = '11.5px system-ui, "DejaVu Sans", sans-serif';
    ctx.fillStyle = '#1d2733'; ctx.strokeStyle = 'rgba(255,255,255,.85)'; ctx.lineWidth = 3; ctx.lineJoin = 'round';
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i];
      if (e.labelW === undefined) e.labelW = ctx.measureText(e.v.id).width;
      const w = e.labelW, x0 = e.lx + r + 6, y0 = e.ly - 7;
      const bx = [x0 - 1, y0, x0 + w + 1, y0 + 14];
      if (boxes.some((o) => bx[0] < o[2] && bx[2] > o[0] && bx[1] < o[3] && bx[3] > o[1])) continue;
      boxes.push(bx);
      ctx.strokeText(e.v.id, x0, e.ly + 4);
      ctx.fillText(e.v.id, x0, e.ly + 4);
    }
    ctx.restore();
  },

  /**
   * pick returns what is drawn at a container point: {vehicle: id}, {cluster} or null.
   */
  pick(containerPoint) {
    const lp = this._map.containerPointToLayerPoint(containerPoint);
    let best = null, bd = 14 * 14;
    for (const e of this.points) {
      const d = (e.lx - lp.x) ** 2 + (e.ly - lp.y) ** 2;
      if (d < bd) { bd = d; best = e.v.id; }
    }
    if (best) return { vehicle: best };
    for (const c of this.clusters) {
      if ((c.lx - lp.x) ** 2 + (c.ly - lp.y) ** 2 <= c.r * c.r) return { cluster: c };
    }
    return null;
  },

  /** zoomInto zooms the map to where a cluster falls apart. */
  zoomInto(c) {
    const z = Math.min(this.index.getClusterExpansionZoom(c.id), this._map.getMaxZoom());
    this._map.setView([c.lat, c.lon], Math.max(z, this._map.getZoom() + 1));
  },

  /** inView counts the vehicles inside the map's view, clustered or not. */
  inView() {
    const b = this._map.getBounds(), clng = this._map.getCenter().lng;
    let n = 0;
    for (const e of this.vehicles.values()) {
      if (e.lat !== undefined && b.contains([e.lat, nearLon(e.lon, clng)])) n++;
    }
    return n;
  },

  /** state describes every vehicle and cluster as drawn now, in container pixels. */
  state() {
    const map = this._map, now = performance.now(), clng = map.getCenter().lng, size = map.getSize();
    const vehicles = [];
    for (const e of this.vehicles.values()) {
      const o = { id: e.v.id, fleet: e.v.fleet, class: e.v.class, lat: e.lat, lon: e.lon, seq: e.v.seq,
        alert: this.options.severity ? this.options.severity(e.v.id) : '' };
      if (e.lat !== undefined) {
        const pos = this.position(e, now);
        const p = map.latLngToContainerPoint([pos[0], nearLon(pos[1], clng)]);
        o.x = p.x; o.y = p.y;
        o.visible = p.x >= 0 && p.y >= 0 && p.x <= size.x && p.y <= size.y;
        o.clustered = o.visible && !this.pointIds.has(e.v.id);
      } else {
        o.visible = false; o.clustered = false;
      }
      vehicles.push(o);
    }
    const clusters = this.clusters.map((c) => {
      const p = map.latLngToContainerPoint([c.lat, c.lon]);
      return { x: p.x, y: p.y, count: c.count, fleet: c.fleet || '', alert: c.sev ? SEVERITIES[c.sev - 1] : '' };
    });
    return { vehicles, clusters, indexBuilds: this.indexBuilds, indexMs: this.indexMs };
  },
});
