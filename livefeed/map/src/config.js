// The page's configuration comes from the livefeed that serves it (map-config.json: the
// livefeed's -map-* flags), so that one binary serves the map of any deployment.

/**
 * loadConfig fetches map-config.json. A livefeed too old to serve it (404) or a network error
 * leaves the defaults: the offline basemap, no tiles, no geofences.
 * @returns {Promise<{tiles: ?{url: string, attribution: string, max_zoom: number, subdomains: string},
 *   geofences_url: string, geofences_refresh_s: number}>}
 */
export async function loadConfig() {
  const defaults = { tiles: null, geofences_url: '', geofences_refresh_s: 60 };
  try {
    const r = await fetch('map-config.json', { cache: 'no-cache', credentials: 'omit' });
    if (!r.ok) return defaults;
    return Object.assign(defaults, await r.json());
  } catch (err) {
    console.warn('drover map: no map-config.json, using the offline basemap only', err);
    return defaults;
  }
}
