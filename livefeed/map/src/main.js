// drover live map: vehicles from the livefeed's WebSocket API (docs/live-api.md) on a Leaflet
// map. Underneath, an offline basemap from Natural Earth that ships in the page (basemap.js),
// and, when the livefeed is given a tile URL (-map-tiles), that provider's tiles over it.
// Geofences from -map-geofences (geofences.js), alerts as toasts and marker states (alerts.js),
// and, with -map-api, an "edit fences" mode that saves through the control plane (fenceedit.js).
//
// URL parameters: token (client token; moved to sessionStorage and removed from the address
// bar), lat, lon, zoom (initial view), fleets (comma-separated initial filter), devices
// (comma-separated: only these vehicles, wherever they are), rate (max updates per second per
// vehicle), tiles=off (never fetch tiles, even when configured).
//
// For tests and tools, window.droverMap (below) returns what is drawn and drives the page; body
// carries data-connected and data-vehicles.
import L from 'leaflet';
import 'leaflet/dist/leaflet.css';
import './map.css';
import { loadConfig } from './config.js';
import { Basemap } from './basemap.js';
import { VehicleLayer, STALE_MS } from './vehicles.js';
import { Geofences } from './geofences.js';
import { FenceEditor } from './fenceedit.js';
import { Alerts } from './alerts.js';
import { Feed, setToken, takeTokenFromURL } from './feed.js';
import { $, Colours, el, normLon, quantile } from './util.js';

const MAX_DEVICES = 1000; // the livefeed's default -max-subscribe-devices

const params = new URLSearchParams(location.search);
takeTokenFromURL(params);
const maxRate = parseFloat(params.get('rate')) || 0;
const reducedMotion = !!(window.matchMedia && matchMedia('(prefers-reduced-motion: reduce)').matches);

const fleetColours = new Colours(), classColours = new Colours();
let colourBy = 'fleet';
const colourOf = (v) => (colourBy === 'class' ? classColours.get(v.class) : fleetColours.get(v.fleet));

const knownFleets = [];
const activeFleets = new Set(); // empty: every fleet
let devices = parseIds(params.get('devices') || ''); // empty: the view's area
let fitted = params.has('lat') || params.has('lon') || params.has('zoom');
let fitOnSnapshot = !fitted || devices.length > 0;
let selected = null, following = false;
let hello = null;
// Vehicle updates received, counted per 100 ms over the last 5 s, for the updates/s of the
// status line (a timestamp per update would be 50,000 of them at 10,000 vehicles).
const updateCounts = []; // [[bucket, count], ...], oldest first
function countUpdates(now, n) {
  const b = Math.floor(now / 100), last = updateCounts[updateCounts.length - 1];
  if (last && last[0] === b) last[1] += n; else updateCounts.push([b, n]);
}
let tilesState = 'off', tilesLoaded = 0, tileErrors = 0;

// ---- the map ----
const map = L.map('map', { minZoom: 1, maxZoom: 18, zoomControl: true, attributionControl: true, keyboard: true,
  worldCopyJump: false, fadeAnimation: !reducedMotion, zoomAnimation: !reducedMotion, markerZoomAnimation: !reducedMotion });
map.attributionControl.setPrefix('<a href="https://leafletjs.com" target="_blank" rel="noopener">Leaflet</a>');
map.createPane('vehicles').style.zIndex = 450;
L.control.scale({ imperial: false, position: 'bottomright' }).addTo(map);
const z0 = parseFloat(params.get('zoom'));
map.setView([parseFloat(params.get('lat')) || 0, parseFloat(params.get('lon')) || 15], isNaN(z0) ? 2 : z0);

const basemap = new Basemap(map);
basemap.load();

const alerts = new Alerts($('toasts'), {
  onSelect: (id) => { select(id); centreOn(id); },
  onChange: () => { layer.alertsChanged(); if (selected) updatePanel(); },
});
const layer = new VehicleLayer({ colour: colourOf, severity: (id) => alerts.severity(id), reducedMotion }).addTo(map);
const geofences = new Geofences(map);
// A saved fence shows in the read-only layer at once, not at the next refresh.
const fenceEditor = new FenceEditor(map, { onSaved: () => { if (geofences.url) geofences.load(); } });

const feed = new Feed({
  subscription: () => {
    const m = devices.length ? { devices } : { bbox: bbox() };
    if (activeFleets.size) m.fleets = Array.from(activeFleets).sort();
    if (maxRate > 0) m.max_rate_hz = maxRate;
    return m;
  },
  onMessage,
  onStatus: updateStatus,
  askToken,
});

loadConfig().then((cfg) => {
  if (cfg.tiles && cfg.tiles.url && params.get('tiles') !== 'off') addTiles(cfg.tiles);
  if (cfg.geofences_url) geofences.start(cfg.geofences_url, cfg.geofences_refresh_s);
  fenceEditor.configure(cfg.api_url);
});

// addTiles draws the configured tile provider over the offline basemap. A tile that fails to
// load leaves the basemap showing through.
function addTiles(t) {
  tilesState = 'loading';
  // Past the provider's highest zoom, its tiles are scaled up rather than asked for.
  const maxZoom = Math.max(18, t.max_zoom || 0);
  map.setMaxZoom(maxZoom);
  const tl = L.tileLayer(t.url, {
    maxZoom, maxNativeZoom: t.max_zoom || 18, subdomains: t.subdomains || 'abc', referrerPolicy: 'strict-origin',
    // Leaflet reads attributions as HTML: an operator's text is shown as text.
    attribution: escapeHTML(t.attribution || new URL(t.url.replace(/\{[^}]*\}/g, 'x')).host),
  });
  tl.on('tileload', () => { tilesLoaded++; tilesState = 'ok'; basemap.hideLabels(true); });
  tl.on('tileerror', () => { tileErrors++; if (!tilesLoaded) tilesState = 'offline'; });
  tl.addTo(map);
}

// bbox is the area to subscribe to: the view and a margin, split at the antimeridian by giving
// west > east, the whole world when the view is wider than it.
function bbox() {
  const b = map.getBounds().pad(0.15);
  let west = -180, east = 180;
  if (b.getEast() - b.getWest() < 360) {
    west = normLon(b.getWest()); east = normLon(b.getEast());
    if (east === -180) east = 180;
  }
  const r = (x) => Math.round(x * 1e6) / 1e6;
  return { west: r(west), south: r(Math.max(-90, b.getSouth())), east: r(east), north: r(Math.min(90, b.getNorth())) };
}

map.on('moveend', () => { if (!devices.length) feed.subscribeSoon(); });
map.on('dragstart', () => { setFollow(false); fitOnSnapshot = false; });
map.on('click', (ev) => {
  const hit = layer.pick(ev.containerPoint);
  if (hit && hit.vehicle) select(hit.vehicle);
  else if (hit && hit.cluster) layer.zoomInto(hit.cluster);
  else select(null);
});
map.on('mousemove', (ev) => { map.getContainer().classList.toggle('hover', !!layer.pick(ev.containerPoint)); });
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !(ev.target && ev.target.tagName === 'INPUT')) select(null);
});

// ---- messages ----
function onMessage(m) {
  const now = performance.now();
  switch (m.type) {
    case 'hello':
      hello = m;
      (m.fleets || []).forEach(addFleet);
      renderFleets();
      break;
    case 'snapshot':
      layer.replace(m.vehicles, now);
      m.vehicles.forEach((v) => addFleet(v.fleet));
      // Fitted once there is a position to fit: a snapshot may list vehicles without one yet.
      if (fitOnSnapshot && fitTo(m.vehicles)) { fitOnSnapshot = false; fitted = true; }
      fleetsChanged();
      if (selected) updatePanel();
      break;
    case 'update': {
      let fleetsDirty = false, sel = false;
      countUpdates(now, (m.vehicles || []).length);
      for (const v of m.vehicles || []) {
        layer.upsert(v, now, true);
        if (addFleet(v.fleet)) fleetsDirty = true;
        if (v.id === selected) sel = true;
      }
      for (const id of m.removed || []) { layer.remove(id); fleetsDirty = true; }
      if (fleetsDirty) fleetsChanged();
      if (sel) { updatePanel(); if (following) centreOn(selected, true); }
      if (fitOnSnapshot && m.vehicles && m.vehicles.length) fitSoon();
      break;
    }
    case 'alert':
      alerts.handle(m);
      break;
    case 'error':
      feed.note = 'Server: ' + m.message;
      console.warn('drover livefeed error', m.code, m.message);
      setTimeout(() => { feed.note = ''; updateStatus(); }, 5000);
      break;
  }
  updateStatusSoon();
}

// fitSoon fits the view to the vehicles a second after the first ones arrive in updates: the
// first snapshot was empty (the map opened before the fleet reported), and the fleet comes in
// over a moment.
let fitTimer = 0;
function fitSoon() {
  if (fitTimer) return;
  fitTimer = setTimeout(() => {
    fitTimer = 0;
    if (!fitOnSnapshot) return;
    // No position yet: the next update with vehicles tries again.
    if (fitTo(Array.from(layer.vehicles.values(), (e) => e.v))) { fitOnSnapshot = false; fitted = true; }
  }, 1000);
}

// fitTo fits the view to the vehicles with a position; false when none has one.
function fitTo(list) {
  const pts = list.filter((v) => v.lat !== undefined && v.lat !== null).map((v) => [v.lat, v.lon]);
  if (!pts.length) return false;
  if (pts.length === 1) { viewTo(pts[0], 12); return true; }
  afterZoom(() => map.fitBounds(L.latLngBounds(pts), { padding: [40, 40], maxZoom: 15, animate: false }));
  return true;
}

// afterZoom runs fn now, or when a zoom animation under way has ended: a view set during one is
// undone by its end (Leaflet moves to the animation's target then).
function afterZoom(fn) {
  if (map._animatingZoom) map.once('zoomend', fn); else fn();
}
function viewTo(latlng, zoom, options) { afterZoom(() => map.setView(latlng, zoom, options)); }

// ---- fleets ----
function addFleet(f) {
  if (!f || knownFleets.includes(f)) return false;
  knownFleets.push(f);
  knownFleets.sort();
  fleetColours.get(f);
  return true;
}
function renderFleets() {
  const counts = {};
  for (const e of layer.vehicles.values()) counts[e.v.fleet] = (counts[e.v.fleet] || 0) + 1;
  const all = el('button', 'chip', 'All fleets');
  all.type = 'button';
  all.setAttribute('aria-pressed', activeFleets.size === 0 ? 'true' : 'false');
  all.onclick = () => { activeFleets.clear(); renderFleets(); feed.subscribe(); };
  const chips = [all];
  for (const f of knownFleets) {
    const on = activeFleets.size === 0 || activeFleets.has(f);
    const b = el('button', 'chip' + (on ? '' : ' off'));
    b.type = 'button'; b.dataset.fleet = f;
    b.setAttribute('aria-pressed', activeFleets.has(f) ? 'true' : 'false');
    b.title = on ? 'Show only the fleets you pick' : 'Show this fleet';
    const sw = el('span', 'swatch'); sw.style.background = fleetColours.get(f);
    b.append(sw, el('span', null, f), el('span', 'n', counts[f] ? String(counts[f]) : ''));
    b.onclick = () => {
      if (activeFleets.has(f)) activeFleets.delete(f); else activeFleets.add(f);
      if (activeFleets.size === knownFleets.length) activeFleets.clear();
      renderFleets(); feed.subscribe();
    };
    chips.push(b);
  }
  $('fleets').replaceChildren(...chips);
}
let fleetsTimer = 0;
function fleetsChanged() {
  if (fleetsTimer) return;
  fleetsTimer = setTimeout(() => { fleetsTimer = 0; renderFleets(); }, 500);
}
$('colorby').onchange = (ev) => { colourBy = ev.target.value; layer.setColourByFleet(colourBy === 'fleet'); };

// ---- devices: "show only these vehicles, wherever they are" ----
function parseIds(s) {
  return Array.from(new Set(s.split(/[\s,]+/).filter(Boolean))).slice(0, MAX_DEVICES);
}
function setDevices(list) {
  devices = list;
  $('devices').value = list.join(', ');
  $('find').classList.toggle('active', list.length > 0);
  fitOnSnapshot = list.length > 0;
  feed.subscribe();
}
$('devices').value = devices.join(', ');
$('find').classList.toggle('active', devices.length > 0);
$('find').onsubmit = (ev) => { ev.preventDefault(); setDevices(parseIds($('devices').value)); };
$('devices').addEventListener('search', () => setDevices(parseIds($('devices').value))); // the clear (×) button

// ---- the vehicle panel ----
function compass(deg) { return ['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'][Math.round(((deg % 360) + 360) % 360 / 45) % 8]; }
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  return Math.floor(s / 3600) + ' h ago';
}
function num(x, d) { return x === undefined || x === null ? null : x.toFixed(d); }
function select(id) {
  if (id !== selected) setFollow(false);
  selected = id;
  layer.setSelected(id);
  $('panel').hidden = !id;
  if (id) updatePanel();
}
function centreOn(id, smooth) {
  const e = layer.vehicles.get(id);
  if (!e || e.lat === undefined) return;
  if (smooth) afterZoom(() => map.panTo([e.lat, e.lon], { animate: !reducedMotion, duration: 0.5 }));
  else viewTo([e.lat, e.lon], Math.max(map.getZoom(), 12));
}
function setFollow(on) {
  following = on && !!selected;
  $('pfollow').setAttribute('aria-pressed', String(following));
  if (following) centreOn(selected, true);
}
function updatePanel() {
  const e = layer.vehicles.get(selected);
  if (!e) { $('psub').textContent = 'Out of view: no longer subscribed to this vehicle.'; return; }
  const v = e.v;
  $('ptitle').textContent = v.id;
  $('pswatch').style.background = colourOf(v);
  $('psub').textContent = [v.fleet, v.class, v.region].filter(Boolean).join(' · ');
  const act = alerts.active(v.id);
  $('palerts').hidden = !act.length;
  $('palerts').replaceChildren(...act.map((a) => el('li', 'sev-' + a.severity, `${a.severity}: ${a.title || a.rule}`)));
  const last = v.recv_ms || v.time_ms;
  const rows = [
    ['Last seen', ago(last), Date.now() - last > STALE_MS ? 'stale' : ''],
    ['Device time', new Date(v.time_ms).toLocaleTimeString()],
    ['Position', v.lat === undefined ? null : v.lat.toFixed(5) + ', ' + v.lon.toFixed(5)],
    ['Speed', num(v.speed_kmh, 0) && num(v.speed_kmh, 0) + ' km/h'],
    ['Heading', v.heading_deg === undefined ? null : Math.round(v.heading_deg) + '° ' + compass(v.heading_deg)],
    ['Ignition', v.ignition === undefined ? null : (v.ignition ? 'on' : 'off')],
    ['Engine temp', num(v.engine_temp_c, 1) && num(v.engine_temp_c, 1) + ' °C'],
    ['Engine speed', num(v.engine_rpm, 0) && num(v.engine_rpm, 0) + ' rpm'],
    ['Battery', num(v.battery_v, 1) && num(v.battery_v, 1) + ' V'],
    ['Fuel', num(v.fuel_pct, 0) && num(v.fuel_pct, 0) + ' %'],
    ['Odometer', num(v.odometer_km, 0) && Number(num(v.odometer_km, 0)).toLocaleString() + ' km'],
  ];
  const items = [];
  for (const [k, val, cls] of rows) {
    if (val === null || val === undefined) continue;
    const dd = el('dd', cls || null, val);
    items.push(el('dt', null, k), dd);
  }
  $('pvalues').replaceChildren(...items);
}
$('pclose').onclick = () => select(null);
$('pcentre').onclick = () => centreOn(selected);
$('pfollow').onclick = () => setFollow(!following);
setInterval(() => { if (selected) updatePanel(); }, 1000);

// ---- login ----
function askToken(why) {
  $('loginwhy').textContent = why;
  $('login').hidden = false;
  $('token').focus();
}
$('login').onsubmit = (ev) => {
  ev.preventDefault();
  setToken($('token').value.trim());
  $('login').hidden = true; feed.failures = 0; feed.connect();
};

// ---- status ----
function updatesPerSec() {
  const now = performance.now();
  while (updateCounts.length && now - updateCounts[0][0] * 100 > 5000) updateCounts.shift();
  const span = Math.min(5000, Math.max(1000, now - (feed.connectedAt || now)));
  return updateCounts.reduce((s, c) => s + c[1], 0) / (span / 1000);
}
let shown = 0, statusTimer = 0;
function updateStatusSoon() {
  if (!statusTimer) statusTimer = setTimeout(() => { statusTimer = 0; updateStatus(); }, 250);
}
function updateStatus() {
  shown = layer._map ? layer.inView() : 0;
  const ups = updatesPerSec();
  $('dot').className = 'dot ' + (feed.connected ? 'ok' : feed.ws ? 'warn' : 'bad');
  const parts = [feed.connected ? 'Connected' : feed.ws ? 'Connecting…' : 'Offline'];
  if (feed.note && feed.connected) parts.push(feed.note);
  if (!feed.connected && feed.note) parts[0] = feed.note;
  parts.push(shown + (shown === 1 ? ' vehicle' : ' vehicles') + ' shown');
  parts.push((ups < 10 ? ups.toFixed(1) : Math.round(ups)) + ' updates/s');
  $('statustext').textContent = parts.join(' · ');
  document.body.dataset.connected = String(feed.connected);
  document.body.dataset.vehicles = String(shown);
}
setInterval(updateStatus, 1000);
map.on('moveend', updateStatusSoon);

function escapeHTML(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

// ---- performance, for the browser benchmark (internal/browsertest) ----
const perf = {
  on: false,
  start() {
    this.on = true; this.t0 = performance.now(); this.raf = []; this.draws = []; this.msgs = []; this.long = [];
    let last = performance.now();
    const tick = (t) => { if (!this.on) return; this.raf.push(t - last); last = t; requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
    layer.frameHook = (ms) => this.draws.push(ms);
    if (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes.includes('longtask')) {
      this.obs = new PerformanceObserver((list) => list.getEntries().forEach((e) => this.long.push(e.duration)));
      this.obs.observe({ type: 'longtask' });
    }
    this.builds0 = layer.indexBuilds;
  },
  stop() {
    this.on = false; layer.frameHook = null;
    if (this.obs) this.obs.disconnect();
    const s = (a) => a.slice().sort((x, y) => x - y);
    const raf = s(this.raf), draws = s(this.draws), msgs = s(this.msgs);
    const secs = (performance.now() - this.t0) / 1000;
    const sum = (a) => a.reduce((x, y) => x + y, 0);
    return {
      seconds: secs, vehicles: layer.vehicles.size, shown,
      frames: raf.length, frameP50: quantile(raf, 0.5), frameP95: quantile(raf, 0.95), frameP99: quantile(raf, 0.99), frameMax: raf[raf.length - 1] || 0,
      draws: draws.length, drawP50: quantile(draws, 0.5), drawP95: quantile(draws, 0.95), drawMax: draws[draws.length - 1] || 0, drawTotal: sum(draws),
      messages: msgs.length, messageP50: quantile(msgs, 0.5), messageP95: quantile(msgs, 0.95), messageMax: msgs[msgs.length - 1] || 0, messageTotal: sum(msgs),
      indexBuilds: layer.indexBuilds - this.builds0, indexMs: layer.indexMs,
      longTasks: this.long.length, longTaskTotal: sum(this.long),
      heapMB: performance.memory ? performance.memory.usedJSHeapSize / 1048576 : 0,
    };
  },
};
// Time each WebSocket message's handling (parse included) while perf is on.
const handle = feed.onMessage;
feed.onMessage = (m) => {
  if (!perf.on) { handle(m); return; }
  const t = performance.now();
  handle(m);
  perf.msgs.push(performance.now() - t);
};

// ---- for tests and tools ----
window.droverMap = {
  /**
   * state returns what the map shows now: vehicles with their latest position (lat, lon),
   * where they are drawn (x, y in CSS pixels of the map, below the bar), whether on screen
   * (visible) and whether a cluster stands for them (clustered), the clusters, the basemap,
   * tiles, geofences and alerts.
   */
  state() {
    const c = map.getCenter();
    const vs = layer.state();
    return {
      connected: feed.connected, vehicles: vs.vehicles, clusters: vs.clusters, drawn: shown = layer.inView(),
      updatesPerSec: updatesPerSec(), messages: feed.messages,
      view: { lat: c.lat, lon: normLon(c.lng), zoom: map.getZoom(), bbox: bbox() },
      subscription: feed.lastSub, selected, following, devices: devices.slice(),
      fleets: knownFleets.slice(), activeFleets: Array.from(activeFleets),
      tiles: tilesState, tilesLoaded, tileErrors,
      basemap: basemap.state(), geofences: geofences.state(), alerts: alerts.state(), fenceEditor: fenceEditor.state(),
      hello: hello ? { client: hello.client, fleets: hello.fleets } : null,
    };
  },
  setView(lat, lon, zoom) { fitted = true; fitOnSnapshot = false; viewTo([lat, lon], zoom, { animate: false }); },
  select,
  follow(on) { setFollow(on); },
  /** receive handles a live API message as if it came over the WebSocket (tests, tools). */
  receive(m) { onMessage(m); },
  /** fenceEditor is the "edit fences" mode (fenceedit.js): draw, moveVertex, save, ... */
  fenceEditor,
  perf,
  leaflet: map,
};

// ---- start ----
(params.get('fleets') || '').split(',').filter(Boolean).forEach((f) => { activeFleets.add(f); addFleet(f); });
renderFleets();
feed.connect();
