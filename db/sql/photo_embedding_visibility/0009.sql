-- The visibility rule kept on the embedding rows, so the nearest-neighbour scan tests it on the row it already
-- reads, without a lookup into photos for each of the ~70 graph candidates it visits per result under a
-- selective filter. Two flags per row: the rule (photo_is_visible(), written once) evaluated for both values
-- of minors_allowed:
--   visible_restricted    photo_is_visible(p, false): shown where the minors law applies
--   visible_unrestricted  photo_is_visible(p, true):  shown where it does not
-- Never stale, by two triggers in the writing transaction itself (this one, and photo_visibility_to_embeddings):
-- - photo_embeddings, BEFORE INSERT OR UPDATE: the flags are computed from the photo's row, whatever the
--   statement set them to (nobody can write a flag by hand). The photo's row is read FOR SHARE: a concurrent
--   change of the photo then waits for this transaction to end and its own trigger sees the new embedding
--   row, or this waits for that change and reads its result (READ COMMITTED re-reads the locked row).
-- - photos, AFTER UPDATE (any column, as the rule takes the whole row): when the rule's answer for either
--   flag changes (status, visibility, moderation, a declaration, the minors flags, or any column a later
--   rule reads), the photo's embedding rows are updated, which runs the first trigger.
-- Deleting a photo deletes its embeddings (ON DELETE CASCADE). A new revision of photo_is_visible must
-- recompute every row's flags in its migration (`UPDATE photo_embeddings SET photo_id = photo_id`).
-- SECURITY DEFINER: whoever may update a photo keeps its embeddings' flags right, without rights of their own
-- on photo_embeddings.
CREATE OR REPLACE FUNCTION photo_embedding_visibility() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    photo photos;
BEGIN
    SELECT * INTO photo FROM photos WHERE id = NEW.photo_id FOR SHARE;
    NEW.visible_restricted := FOUND AND coalesce(photo_is_visible(photo, false), false);
    NEW.visible_unrestricted := FOUND AND coalesce(photo_is_visible(photo, true), false);
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION photo_embedding_visibility() FROM PUBLIC;
CREATE OR REPLACE TRIGGER photo_embedding_visibility
    BEFORE INSERT OR UPDATE ON photo_embeddings
    FOR EACH ROW EXECUTE FUNCTION photo_embedding_visibility();
