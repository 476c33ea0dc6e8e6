-- The other half of photo_embedding_visibility (see there): when an update of a photo changes the visibility
-- rule's answer for either value of minors_allowed (status, visibility, moderation, a declaration, the minors
-- flags, or any column a later rule reads: the rule takes the whole row), the photo's embedding rows are updated
-- in the same transaction, which runs photo_embedding_visibility() on each and so recomputes their flags.
-- SECURITY DEFINER: whoever may update a photo keeps its vectors' flags right without rights on photo_embeddings.
CREATE OR REPLACE FUNCTION photo_visibility_to_embeddings() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    IF photo_is_visible(NEW, false) IS DISTINCT FROM photo_is_visible(OLD, false)
       OR photo_is_visible(NEW, true) IS DISTINCT FROM photo_is_visible(OLD, true)
       OR NEW.id IS DISTINCT FROM OLD.id THEN
        -- The values are recomputed by photo_embedding_visibility(); the assignment only makes the row change.
        UPDATE photo_embeddings SET visible_restricted = photo_is_visible(NEW, false) WHERE photo_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION photo_visibility_to_embeddings() FROM PUBLIC;
CREATE OR REPLACE TRIGGER photo_visibility_to_embeddings
    AFTER UPDATE ON photos
    FOR EACH ROW EXECUTE FUNCTION photo_visibility_to_embeddings();
