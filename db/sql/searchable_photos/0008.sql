-- The photos every viewer may see: the strictest answer (the minors law applies). Viewers in a region where
-- it does not apply reach the rest only through the search functions and photo_visibility.
-- security_barrier: the view's own condition runs before any condition of the caller's query, so a function
-- of the caller's (a temporary one, say) never sees a row the view hides.
-- 0008: the photo's metadata (capture time, camera, lens, description, tags, orientation) for joins; GPS is
-- never shown here.
CREATE OR REPLACE VIEW searchable_photos WITH (security_barrier) AS
SELECT id, photographer, title, width, height, created_at, indexed_at,
       taken_at, camera, lens, description, tags, orientation
FROM photos
WHERE photo_is_visible(photos, false);
GRANT SELECT ON searchable_photos TO withsense_reader;
