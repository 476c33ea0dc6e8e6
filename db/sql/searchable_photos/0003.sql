-- The photos every viewer may see (the strictest answer: the minors law applies).
-- As revision 0003 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_viewdef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE VIEW public.searchable_photos AS
 SELECT id,
    photographer,
    title,
    width,
    height,
    created_at,
    indexed_at
   FROM photos
  WHERE ((status = 'indexed'::text) AND (visibility = 'public'::text) AND (moderation_status = 'approved'::text) AND (NOT (depicts_minor AND (NOT parental_consent))));
GRANT SELECT ON public.searchable_photos TO withsense_reader;
