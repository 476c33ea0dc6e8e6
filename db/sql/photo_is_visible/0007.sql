-- The visibility rule, written once: a photo is shown when it is indexed, public and approved by moderation,
-- and it does not show a minor without parental consent, unless the viewer's region allows that
-- (`minors_allowed`: NOT region_is_restricted(region)). Used by the view searchable_photos (minors never
-- allowed: the strictest answer), search_photos, photo_visibility, and through those two by similar_photos.
-- It takes the whole photos row, so a new condition on any column is a change to this body alone.
-- LANGUAGE sql, IMMUTABLE, no SET clause, not SECURITY DEFINER: the planner inlines it, so its conditions
-- reach each query as plain column tests (EXPLAIN shows them, never a call) and run inside the
-- nearest-neighbour index scan of search_photos.
CREATE OR REPLACE FUNCTION photo_is_visible(photo photos, minors_allowed boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN photo.status = 'indexed'
    AND photo.visibility = 'public'
    AND photo.moderation_status = 'approved'
    AND (minors_allowed OR NOT photo.depicts_minor OR photo.parental_consent);
-- Callers of searchable_photos need EXECUTE on the functions the view calls.
REVOKE ALL ON FUNCTION photo_is_visible(photos, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION photo_is_visible(photos, boolean) TO withsense_reader;
