// The "edit fences" mode: an operator draws a polygon or a circle, moves a fence's vertices or
// deletes a fence, and saves through the control plane's geofence routes (docs/api.md:
// POST /v1/geofences, PATCH and DELETE /v1/geofences/{id}) with their API key as a bearer token.
// Drawing and editing are Leaflet-Geoman's (@geoman-io/leaflet-geoman-free, from npm).
//
// The key is kept in sessionStorage only (gone when the tab closes), never in the URL, never
// logged. The control plane's URL comes from the livefeed's -map-api (map-config.json api_url),
// the one origin besides its own the page's CSP lets it reach; the api's -cors-origins must list
// the livefeed's origin. What the API refuses (403 for a fence of another fleet or a viewer's
// key, 422 for a shape it cannot use) is shown to the operator, and the fence stays unsaved.
import L from 'leaflet';
import '@geoman-io/leaflet-geoman-free';
import '@geoman-io/leaflet-geoman-free/dist/leaflet-geoman.css';
import { $ } from './util.js';

const KEY_STORE = 'drover.api.key';
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const STYLE = { color: '#2563c9', weight: 2, fillOpacity: 0.15 };

/**
 * FenceEditor is the edit mode: its own layer of editable fences (loaded from the API with the
 * operator's key), Geoman's toolbar while open, and a panel (#fencepanel) for the key, the new
 * fence's id, fleet and name, Save and Delete, and what the API answered.
 */
export class FenceEditor {
  constructor(map, { onSaved } = {}) {
    this.map = map;
    this.onSaved = onSaved || (() => {});
    this.apiURL = '';
    this.group = L.featureGroup();
    this.open = false;
    this.connected = false;
    this.selected = null;
    this.message = '';
    this.error = '';
    this.saves = 0;
    this.busy = false;
    map.on('pm:create', (e) => this.created(e.layer, e.shape));
    map.on('pm:remove', (e) => this.removed(e.layer));
    $('fenceedit').addEventListener('click', () => (this.open ? this.close() : this.show()));
    $('fenceform').addEventListener('submit', (e) => { e.preventDefault(); this.connect($('fencekey').value); });
    $('fencesave').addEventListener('click', () => this.save());
    $('fencedelete').addEventListener('click', () => this.removeSelected());
    $('fenceclose').addEventListener('click', () => this.close());
  }

  /** configure sets the control plane's URL (map-config.json api_url); empty hides the mode. */
  configure(apiURL) {
    this.apiURL = (apiURL || '').replace(/\/+$/, '');
    $('fenceedit').hidden = !this.apiURL;
  }

  show() {
    if (!this.apiURL) return;
    this.open = true;
    $('fencepanel').hidden = false;
    $('fenceedit').setAttribute('aria-pressed', 'true');
    $('fenceapi').textContent = this.apiURL;
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) this.connect(key); else $('fencekey').focus();
  }

  close() {
    this.open = false;
    $('fencepanel').hidden = true;
    $('fenceedit').setAttribute('aria-pressed', 'false');
    this.map.pm.removeControls();
    this.map.pm.disableDraw();
    this.map.pm.disableGlobalEditMode();
    this.map.pm.disableGlobalRemovalMode();
    this.group.remove();
  }

  /** connect checks the key by loading the fences it may see, then shows the drawing tools. */
  async connect(key) {
    key = (key || '').trim();
    if (!key) return this.fail('an operator API key is needed to edit fences');
    sessionStorage.setItem(KEY_STORE, key);
    $('fencekey').value = '';
    this.say('loading fences…');
    const items = [];
    let cursor = '';
    try {
      do {
        const page = await this.call('GET', '/v1/geofences?limit=500' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
        items.push(...page.items);
        cursor = page.next_cursor || '';
      } while (cursor);
    } catch (err) {
      this.connected = false;
      if (err.status === 401) sessionStorage.removeItem(KEY_STORE); // a wrong key is not kept
      return this.fail(err.message);
    }
    this.group.clearLayers();
    let skipped = 0;
    for (const f of items) {
      const layer = layerOf(f);
      if (!layer) { skipped++; continue; } // corridors and multipolygons: edit them through the API
      this.adopt(layer, f, false);
    }
    this.group.addTo(this.map);
    // Geoman is set up when editing starts: a map nobody edits is left as it was.
    this.map.pm.setGlobalOptions({ layerGroup: this.group, pathOptions: STYLE, templineStyle: STYLE, hintlineStyle: STYLE });
    this.map.pm.addControls({ position: 'topleft', drawMarker: false, drawCircleMarker: false, drawPolyline: false,
      drawRectangle: false, drawText: false, cutPolygon: false, rotateMode: false, dragMode: false });
    this.connected = true;
    const n = this.group.getLayers().length;
    this.say(`${n} fence${n === 1 ? '' : 's'} editable` + (skipped ? ` (${skipped} corridors or multipolygons: edit those through the API)` : ''));
  }

  // adopt makes layer one of the editor's fences: clicking selects it, an edit marks it unsaved.
  adopt(layer, fence, isNew) {
    layer.fence = fence;
    layer.isNew = isNew;
    layer.dirty = isNew;
    layer.on('click', (e) => { L.DomEvent.stopPropagation(e); this.select(layer); });
    layer.on('pm:edit', () => { layer.dirty = true; this.select(layer); });
    layer.addTo(this.group);
  }

  created(layer, shape) {
    if (shape !== 'Polygon' && shape !== 'Circle') { layer.remove(); return; }
    const id = $('fenceid').value.trim() || `fence-${Date.now().toString(36)}`;
    const fence = { id };
    if ($('fencefleet').value.trim()) fence.fleet = $('fencefleet').value.trim();
    if ($('fencename').value.trim()) fence.name = $('fencename').value.trim();
    this.adopt(layer, fence, true);
    this.select(layer);
    if (!ID_RE.test(id)) this.fail(`fence id "${id}": use 1-128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit`);
    else this.say(`${id} drawn: Save to store it`);
  }

  select(layer) {
    if (this.selected && this.selected.setStyle) this.selected.setStyle({ weight: 2 });
    this.selected = layer;
    if (layer && layer.setStyle) layer.setStyle({ weight: 4 });
    $('fencedelete').disabled = !layer;
  }

  /** save stores every unsaved fence: POST a new one, PATCH the geometry of an edited one. */
  async save() {
    const dirty = this.group.getLayers().filter((l) => l.dirty);
    if (!dirty.length) return this.say('nothing to save');
    this.busy = true;
    let ok = 0;
    const errors = [];
    for (const layer of dirty) {
      const shape = shapeOf(layer);
      try {
        if (layer.isNew) {
          await this.call('POST', '/v1/geofences', { ...layer.fence, ...shape });
        } else {
          // radius_m: null removes it where a fence is no longer a circle (merge patch).
          await this.call('PATCH', '/v1/geofences/' + encodeURIComponent(layer.fence.id), { radius_m: null, ...shape });
        }
        Object.assign(layer.fence, shape);
        layer.isNew = false;
        layer.dirty = false;
        ok++;
      } catch (err) {
        errors.push(`${layer.fence.id}: ${err.message}`);
      }
    }
    this.busy = false;
    this.saves += ok;
    if (ok) this.onSaved();
    if (errors.length) this.fail(errors.join('; '));
    else this.say(`saved ${ok} fence${ok === 1 ? '' : 's'}`);
  }

  removeSelected() {
    if (this.selected) this.removed(this.selected);
  }

  // removed deletes a fence the operator took off the map; refused, it comes back.
  async removed(layer) {
    if (!layer.fence) return;
    this.group.removeLayer(layer);
    if (this.selected === layer) this.select(null);
    if (layer.isNew) return this.say(`${layer.fence.id} discarded`);
    try {
      await this.call('DELETE', '/v1/geofences/' + encodeURIComponent(layer.fence.id));
      this.say(`${layer.fence.id} deleted`);
      this.onSaved();
    } catch (err) {
      layer.addTo(this.group);
      this.fail(`${layer.fence.id}: ${err.message}`);
    }
  }

  // call is one request to the control plane with the key as a bearer token. It throws an Error
  // with the API's status and message.
  async call(method, path, body) {
    const key = sessionStorage.getItem(KEY_STORE);
    if (!key) throw Object.assign(new Error('no API key: enter an operator key'), { status: 401 });
    const init = { method, credentials: 'omit', cache: 'no-store', headers: { Authorization: 'Bearer ' + key } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(this.apiURL + path, init);
    } catch (err) {
      // A network error or a CORS refusal: the browser tells no more than this.
      throw new Error(`cannot reach ${this.apiURL} (is it up, and does its -cors-origins list ${location.origin}?)`);
    }
    if (r.status === 204) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const why = (data && data.message) || r.statusText;
      const hint = r.status === 403 ? ' (the key needs the operator role in the fence\'s fleet)' : '';
      throw Object.assign(new Error(`${r.status} ${(data && data.code) || ''}: ${why}${hint}`), { status: r.status });
    }
    return data;
  }

  say(msg) { this.message = msg; this.error = ''; this.render(); }
  fail(msg) { this.error = msg; this.message = ''; this.render(); console.warn('drover map: fence editor:', msg); }
  render() {
    const m = $('fencemsg');
    m.textContent = this.error || this.message;
    m.className = this.error ? 'fencemsg bad' : 'fencemsg';
  }

  state() {
    return {
      available: !!this.apiURL, open: this.open, connected: this.connected, busy: this.busy, saves: this.saves,
      message: this.message, error: this.error, hasKey: !!sessionStorage.getItem(KEY_STORE),
      fences: this.group.getLayers().map((l) => ({ id: l.fence.id, dirty: l.dirty, new: l.isNew, ...shapeOf(l) })),
    };
  }

  /**
   * For tests and tools: draw adds a fence as Geoman's draw tool does (a 'pm:create' event),
   * polygon [[lat, lon], ...] or circle {center: [lat, lon], radius}; moveVertex moves vertex i
   * of a fence's outer ring as dragging it in edit mode does (a 'pm:edit' event).
   */
  draw(shape, geom) {
    const layer = shape === 'Circle' ? L.circle(geom.center, { ...STYLE, radius: geom.radius }) : L.polygon(geom, STYLE);
    layer.addTo(this.group);
    this.map.fire('pm:create', { shape, layer });
  }

  moveVertex(id, i, latlng) {
    const layer = this.group.getLayers().find((l) => l.fence.id === id);
    if (!layer || !layer.getLatLngs) throw new Error(`no polygon fence ${id}`);
    const rings = layer.getLatLngs();
    rings[0][i] = L.latLng(latlng);
    layer.setLatLngs(rings);
    layer.fire('pm:edit', { layer, shape: 'Polygon' });
  }
}

// layerOf is the editable layer of a fence the API holds: a Polygon, or a Point with radius_m.
function layerOf(f) {
  const g = f.geometry;
  if (g && g.type === 'Polygon') return L.polygon(g.coordinates.map((ring) => ring.map((p) => [p[1], p[0]])), STYLE);
  if (g && g.type === 'Point' && f.radius_m > 0) return L.circle([g.coordinates[1], g.coordinates[0]], { ...STYLE, radius: f.radius_m });
  return null;
}

// shapeOf is the geometry (and radius) of a layer as the API takes it.
function shapeOf(layer) {
  if (layer instanceof L.Circle) return { geometry: layer.toGeoJSON(7).geometry, radius_m: Math.round(layer.getRadius() * 10) / 10 };
  return { geometry: layer.toGeoJSON(7).geometry };
}
