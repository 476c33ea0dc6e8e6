-- What a viewer in `region` may know of one photo: 'visible', 'hidden', 'restricted' or 'missing'.
-- As revision 0003 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_functiondef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.photo_visibility(p_photo_id uuid, region text DEFAULT NULL::text)
 RETURNS text
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'public', 'pg_temp'
AS $function$
            SELECT CASE
                WHEN p.id IS NULL THEN 'missing'
                WHEN p.status <> 'indexed' OR p.visibility <> 'public' OR p.moderation_status <> 'approved' THEN 'hidden'
                WHEN p.depicts_minor AND NOT p.parental_consent AND region_is_restricted(region) THEN 'restricted'
                ELSE 'visible'
            END
            FROM (SELECT 1) one LEFT JOIN photos p ON p.id = p_photo_id
        $function$;
REVOKE ALL ON FUNCTION public.photo_visibility(p_photo_id uuid, region text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.photo_visibility(p_photo_id uuid, region text) TO withsense_reader;
