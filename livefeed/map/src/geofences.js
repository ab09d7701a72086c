// Geofences, drawn read-only from a GeoJSON FeatureCollection at the URL the livefeed's
// -map-geofences flag gives (docs/live-api.md, "Geofences on the map", has the shape). The page
// reloads it every geofences_refresh_s seconds, so a fence added through the control plane
// shows without a reload of the page. Drawing and editing fences is fenceedit.js's.
import L from 'leaflet';
import { el } from './util.js';

// Colours by the fence's kind; properties.color (#rrggbb) overrides.
const KIND_COLOURS = { depot: '#139a7a', 'no-go': '#c0392b', speed: '#d97706', corridor: '#2563c9', zone: '#8e44ad' };
const DEFAULT_COLOUR = '#5c6b7a';
const EARTH_CIRCUMFERENCE_M = 40075016.686;

/**
 * Geofences draws the fences of a URL in their own pane (over the basemap and tiles, under the
 * vehicles). state() says what was drawn and what was refused.
 */
export class Geofences {
  constructor(map) {
    this.map = map;
    map.createPane('geofences').style.zIndex = 350;
    this.renderer = L.canvas({ pane: 'geofences', padding: 0.3 });
    this.group = L.layerGroup().addTo(map);
    this.corridors = [];
    this.url = '';
    this.loaded = false;
    this.error = '';
    this.counts = { polygon: 0, circle: 0, corridor: 0 };
    this.skipped = [];
    this.loads = 0;
    map.on('zoomend', () => this.fitCorridors());
  }

  /** start loads url now and every refreshS seconds. */
  start(url, refreshS) {
    this.url = url;
    const load = () => this.load().finally(() => { this.timer = setTimeout(load, Math.max(5, refreshS || 60) * 1000); });
    load();
  }

  async load() {
    try {
      // No credentials and no token: the live client token is for the live API only.
      const r = await fetch(this.url, { credentials: 'omit', cache: 'no-cache' });
      if (!r.ok) throw new Error(`GET ${this.url}: ${r.status} ${r.statusText}`);
      const fc = await r.json();
      if (!fc || fc.type !== 'FeatureCollection' || !Array.isArray(fc.features)) throw new Error('not a GeoJSON FeatureCollection');
      this.draw(fc.features);
      this.loaded = true;
      this.error = '';
      this.loads++;
    } catch (err) {
      // The fences drawn last stay: a control plane restarting does not blank the map.
      this.error = String(err.message || err);
      console.warn('drover map: geofences', this.url, err);
    }
  }

  draw(features) {
    this.group.clearLayers();
    this.corridors = [];
    this.counts = { polygon: 0, circle: 0, corridor: 0 };
    this.skipped = [];
    features.forEach((f, i) => {
      const why = this.add(f);
      if (why) this.skipped.push({ index: i, id: fenceId(f), why });
    });
    this.fitCorridors();
  }

  // add draws one fence, or returns why it cannot.
  add(f) {
    const g = f && f.geometry, p = (f && f.properties) || {};
    if (!g) return 'no geometry';
    const colour = /^#[0-9a-fA-F]{6}$/.test(p.color || '') ? p.color : (KIND_COLOURS[p.kind] || DEFAULT_COLOUR);
    const style = { renderer: this.renderer, color: colour, weight: 2, opacity: 0.9, fillColor: colour, fillOpacity: 0.12 };
    let layer;
    switch (g.type) {
      case 'Polygon':
      case 'MultiPolygon': {
        const polys = g.type === 'Polygon' ? [g.coordinates] : g.coordinates;
        if (!polys.every((rings) => Array.isArray(rings) && rings.every((ring) => validLine(ring, 4)))) return 'bad polygon coordinates';
        layer = L.polygon(polys.map((rings) => rings.map(latLngs)), style);
        this.counts.polygon++;
        break;
      }
      case 'Point': {
        const r = Number(p.radius_m);
        if (!validPos(g.coordinates)) return 'bad point coordinates';
        if (!(r > 0)) return 'a Point needs properties.radius_m > 0 (a circle)';
        layer = L.circle([g.coordinates[1], g.coordinates[0]], { ...style, radius: r });
        this.counts.circle++;
        break;
      }
      case 'LineString':
      case 'MultiLineString': {
        const w = Number(p.width_m);
        const lines = g.type === 'LineString' ? [g.coordinates] : g.coordinates;
        if (!lines.every((l) => validLine(l, 2))) return 'bad line coordinates';
        if (!(w > 0)) return 'a LineString needs properties.width_m > 0 (a corridor)';
        // A corridor is every point within width_m / 2 of its route: a line that wide with
        // round ends and joins, sized to the zoom (fitCorridors), over a thin centre line.
        const ll = lines.map(latLngs);
        const band = L.polyline(ll, { ...style, weight: 1, opacity: 0.22, lineCap: 'round', lineJoin: 'round', interactive: true });
        const centre = L.polyline(ll, { ...style, weight: 1.5, dashArray: '6 5', interactive: false });
        band.corridor = { width: w, lat: midLat(lines) };
        this.corridors.push(band);
        layer = L.featureGroup([band, centre]);
        this.counts.corridor++;
        break;
      }
      default:
        return `unsupported geometry ${g.type}`;
    }
    const name = p.name || fenceId(f) || 'geofence';
    const tip = el('span', null, name);
    if (p.kind) tip.append(el('span', 'kind', ' · ' + p.kind));
    layer.bindTooltip(tip, { sticky: true, className: 'fence-tip' });
    layer.addTo(this.group);
    return '';
  }

  // fitCorridors sets each corridor's line width, in pixels, to its width in metres at this zoom.
  fitCorridors() {
    const z = this.map.getZoom();
    for (const band of this.corridors) {
      const mPerPx = EARTH_CIRCUMFERENCE_M * Math.cos(band.corridor.lat * Math.PI / 180) / (256 * Math.pow(2, z));
      band.setStyle({ weight: Math.max(1, band.corridor.width / mPerPx) });
    }
  }

  state() {
    return { url: this.url, loaded: this.loaded, loads: this.loads, error: this.error, ...this.counts,
      skipped: this.skipped.slice() };
  }
}

function fenceId(f) { return (f && (f.id || (f.properties && f.properties.id))) || ''; }
function validPos(p) {
  return Array.isArray(p) && p.length >= 2 && Number.isFinite(p[0]) && Number.isFinite(p[1]) &&
    Math.abs(p[0]) <= 180 && Math.abs(p[1]) <= 90;
}
function validLine(l, min) { return Array.isArray(l) && l.length >= min && l.every(validPos); }
function latLngs(line) { return line.map((p) => [p[1], p[0]]); }
function midLat(lines) {
  let s = 0, n = 0;
  for (const l of lines) for (const p of l) { s += p[1]; n++; }
  return n ? s / n : 0;
}
